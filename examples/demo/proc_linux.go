package main

import "syscall"

// dieWithParent has the kernel kill a child when the demo dies, however
// it dies, so no daemon of the demo outlives it.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
