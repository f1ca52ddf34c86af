//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// tempControlDir is $TMPDIR/relayctl-UID. Every user can write to $TMPDIR,
// so a folder there that is not this user's, or that others may enter, is
// refused rather than used.
func tempControlDir(create bool) (string, error) {
	dir := tempControlPath()
	if create {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", err
		}
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok || int(st.Uid) != os.Getuid() || fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is not a folder that only this user can use: remove it", dir)
	}
	return dir, nil
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func tempControlPath() string {
	return filepath.Join(os.TempDir(), "relayctl-"+strconv.Itoa(os.Getuid()))
}

// ownedBySelf reports whether this process's user owns the file.
func ownedBySelf(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}
