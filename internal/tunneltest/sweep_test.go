package tunneltest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A namespace left behind by a test binary that died (go test -timeout
// panics without running cleanups) is removed by the next run's sweep; one
// whose owner is alive is kept.
func TestSweepNamespaces(t *testing.T) {
	RequireLab(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	orphan := fmt.Sprintf("%s%xxsweep-1", nsPrefix, dead.Process.Pid)
	mine := fmt.Sprintf("%s%xxsweep-2", nsPrefix, os.Getpid())
	for _, ns := range []string{orphan, mine} {
		if err := run("ip", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = run("ip", "netns", "del", ns) })
	}
	SweepNamespaces()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), orphan) {
		t.Errorf("orphaned namespace %s survived the sweep", orphan)
	}
	if !strings.Contains(string(out), mine) {
		t.Errorf("the sweep removed %s, whose owner is alive", mine)
	}
}
