package testkit

import "syscall"

// childProcAttr makes the kernel kill a child process when the test
// process dies, even by a signal that runs no cleanup (a timeout's panic,
// SIGKILL), so that no node or agent outlives its test.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
