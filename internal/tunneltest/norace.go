//go:build linux && !race

package tunneltest

const raceEnabled = false
