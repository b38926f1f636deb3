//go:build !race

package testkit

const raceEnabled = false

// RaceEnabled reports whether the tests run with the race detector (which
// slows everything several times: bounds on durations scale with it).
const RaceEnabled = raceEnabled
