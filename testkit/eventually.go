package testkit

import (
	"fmt"
	"testing"
	"time"
)

// Eventually polls cond until it returns true, failing the test (t.Fatal)
// if it has not within timeout. It polls often at first (every
// millisecond), then backs off to every 20 ms. msgAndArgs, if given, is a
// format string and its arguments describing what was awaited. Call it
// from the test's goroutine.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, describe(msgAndArgs))
			return
		}
		time.Sleep(wait)
		wait = min(2*wait, 20*time.Millisecond)
	}
}

func describe(msgAndArgs []any) string {
	switch {
	case len(msgAndArgs) == 0:
		return "(no description)"
	case len(msgAndArgs) == 1:
		return fmt.Sprint(msgAndArgs[0])
	}
	if f, ok := msgAndArgs[0].(string); ok {
		return fmt.Sprintf(f, msgAndArgs[1:]...)
	}
	return fmt.Sprint(msgAndArgs...)
}
