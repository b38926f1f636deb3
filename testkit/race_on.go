//go:build race

package testkit

// raceEnabled reports whether the tests run with the race detector, so the
// node binary is built with it too.
const raceEnabled = true

// RaceEnabled reports whether the tests run with the race detector (which
// slows everything several times: bounds on durations scale with it).
const RaceEnabled = raceEnabled
