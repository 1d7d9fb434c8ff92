//go:build !linux

package main

import "syscall"

// dieWithParent: only Linux can tie a child's life to its parent's; here
// the demo's own cleanup stops the daemons.
func dieWithParent() *syscall.SysProcAttr { return nil }
