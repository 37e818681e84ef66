package clustertest

import "syscall"

// childProcAttr makes the kernel kill a child process (a relay) when the
// test binary dies without running its cleanups, so none outlives its test.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
