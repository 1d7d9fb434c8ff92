//go:build race

package yamux

// raceEnabled lets tests too slow under the race detector skip (local).
const raceEnabled = true
