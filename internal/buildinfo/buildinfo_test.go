package buildinfo

import (
	"regexp"
	"runtime"
	"testing"
)

// TestString: the version line names the program, its version, commit,
// protocol version and toolchain; a version set at link time wins.
func TestString(t *testing.T) {
	saved := Version
	defer func() { Version = saved }()
	for _, v := range []string{"", "v1.2.3"} {
		Version = v
		want := v
		if v == "" {
			want = Read().Version // the module's, or "devel"
		}
		re := regexp.MustCompile(`^relayd ` + regexp.QuoteMeta(want) + ` \(commit (?:[0-9a-f]{1,12}(?:\+dirty)?|unknown), protocol 7, ` +
			regexp.QuoteMeta(runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH) + `\)$`)
		if got := String("relayd", 7); !re.MatchString(got) || want == "" {
			t.Errorf("Version %q: String = %q, want it to match %s", v, got, re)
		}
	}
	Version = "v1.2.3"
	if got := Software("relayctl"); got != "relayctl v1.2.3" {
		t.Errorf("Software = %q", got)
	}
}
