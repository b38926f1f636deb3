package faults

import (
	"os"
	"testing"

	"github.com/courier-im/courier/testkit"
)

// TestMain stops the test process's PostgreSQL server at the end.
func TestMain(m *testing.M) { os.Exit(testkit.Main(m)) }
