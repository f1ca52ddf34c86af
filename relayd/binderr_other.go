//go:build !windows

package main

import "syscall"

// The errnos of a failed bind, as bindError tells them apart.
var (
	errAddrInUse    error = syscall.EADDRINUSE
	errAccess       error = syscall.EACCES
	errAddrNotAvail error = syscall.EADDRNOTAVAIL
)
