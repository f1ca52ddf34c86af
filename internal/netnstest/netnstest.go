// Package netnstest runs a test inside a network namespace of its own, for
// tests that change routing (which must never touch the machine's own) or
// send from addresses the machine does not have. The namespace has only lo,
// so nothing sent there can leave it.
package netnstest

import (
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// envName marks the process Enter starts inside the namespace, and names
// the test it is for.
const envName = "RELAY_NETNS_TEST"

// RequireEnv, set to anything, makes a missing unshare or ip a failure
// instead of a skip: CI sets it, so these tests cannot quietly not run.
const RequireEnv = "RELAY_REQUIRE_NETNS"

// Enter reports whether the caller runs inside the namespace. Outside, it
// runs the calling test again in a new user and network namespace
// (unshare -rn, which needs no root where unprivileged user namespaces are
// allowed), with lo up, reports its result as this test's, and returns
// false: the caller then returns at once. Inside, it returns true, and the
// test runs as root of the namespace, free to run ip.
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envName) == t.Name() {
		return true
	}
	if runtime.GOOS != "linux" {
		t.Skip("network namespaces are Linux's")
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, tool+" is not installed (util-linux and iproute2)")
		}
	}
	if out, err := exec.Command("unshare", "-rn", "true").CombinedOutput(); err != nil {
		unavailable(t, "unshare -rn fails here: "+strings.TrimSpace(string(out)))
	}
	var run []string
	for _, part := range strings.Split(t.Name(), "/") {
		run = append(run, "^"+regexp.QuoteMeta(part)+"$")
	}
	script := `ip link set lo up && exec "$@"`
	cmd := exec.Command("unshare", "-rn", "sh", "-c", script, "sh", os.Args[0],
		"-test.run", strings.Join(run, "/"), "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envName+"="+t.Name())
	out, err := cmd.CombinedOutput()
	t.Logf("in a network namespace of its own:\n%s", out)
	if err != nil {
		t.Fatalf("the test failed in its namespace: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("the test did not pass in its namespace")
	}
	return false
}

func unavailable(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("%s, and %s is set", why, RequireEnv)
	}
	t.Skip(why)
}

// Sh runs script with sh -e inside the namespace, failing the test on
// error: a test runs the very commands a message tells users to run.
func Sh(t *testing.T, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}
