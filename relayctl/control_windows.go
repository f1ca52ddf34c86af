package main

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/windows"
)

// tempControlDir is %TEMP%\relayctl. Windows gives each user a %TEMP% of
// their own, under their profile, that other users cannot enter.
func tempControlDir(create bool) (string, error) {
	dir := tempControlPath()
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
	}
	if _, err := os.Stat(dir); err != nil {
		return "", err
	}
	return dir, nil
}

func processAlive(pid int) bool {
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		// Gone, or another user's: only a live process can refuse access.
		return err == windows.ERROR_ACCESS_DENIED
	}
	defer windows.CloseHandle(h)
	var code uint32
	if err := windows.GetExitCodeProcess(h, &code); err != nil {
		return true
	}
	const stillActive = 259
	return code == stillActive
}

func tempControlPath() string { return filepath.Join(os.TempDir(), "relayctl") }

// ownedBySelf holds for every file status reads on Windows: it looks only
// in the user's own %TEMP%, which other users cannot write to.
func ownedBySelf(os.FileInfo) bool { return true }
