package main

import "golang.org/x/sys/windows"

// Winsock reports a failed bind with its own codes, which syscall's Unix
// names (EADDRINUSE…) do not match on Windows.
var (
	errAddrInUse    error = windows.WSAEADDRINUSE
	errAccess       error = windows.WSAEACCES
	errAddrNotAvail error = windows.WSAEADDRNOTAVAIL
)
