//go:build race

package tunneltest

const raceEnabled = true
