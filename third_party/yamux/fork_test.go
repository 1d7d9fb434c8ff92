package yamux

import (
	"os"
	"strings"
	"testing"
)

// LocalPatches counts the patch sections of PATCHES.md.
func TestLocalPatchesMatchesPATCHES(t *testing.T) {
	b, err := os.ReadFile("PATCHES.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "## ") && !strings.HasPrefix(line, "## Local changes to upstream's tests") {
			n++
		}
	}
	if n != LocalPatches {
		t.Errorf("PATCHES.md has %d patch sections, LocalPatches says %d", n, LocalPatches)
	}
}
