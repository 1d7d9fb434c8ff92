package e2e

import (
	"bufio"
	"crypto/sha256"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// make release cross-builds static binaries for each platform a daemon
// runs on, each of the right format and architecture, with checksums that
// match, and a version line that names the release and its commit.
func TestMakeRelease(t *testing.T) {
	dist := t.TempDir()
	cmd := exec.Command("make", "release", "DIST="+dist, "VERSION=v9.9.9-test")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	type want struct {
		format string
		arch   any
	}
	wants := map[string]want{
		"tunneld-v9.9.9-test-linux-amd64":       {"elf", elf.EM_X86_64},
		"tunneld-v9.9.9-test-linux-arm64":       {"elf", elf.EM_AARCH64},
		"tunneld-v9.9.9-test-linux-arm":         {"elf", elf.EM_ARM},
		"tunnelc-v9.9.9-test-linux-amd64":       {"elf", elf.EM_X86_64},
		"tunnelc-v9.9.9-test-linux-arm64":       {"elf", elf.EM_AARCH64},
		"tunnelc-v9.9.9-test-linux-arm":         {"elf", elf.EM_ARM},
		"tunnelc-v9.9.9-test-darwin-amd64":      {"macho", macho.CpuAmd64},
		"tunnelc-v9.9.9-test-darwin-arm64":      {"macho", macho.CpuArm64},
		"tunnelc-v9.9.9-test-windows-amd64.exe": {"pe", uint16(pe.IMAGE_FILE_MACHINE_AMD64)},
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if len(names) != len(wants)+1 {
		t.Errorf("dist holds %v, want the %d binaries and SHA256SUMS", names, len(wants))
	}
	sums := map[string]string{}
	f, err := os.Open(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", sc.Text())
		}
		sums[name] = sum
	}
	for name, w := range wants {
		p := filepath.Join(dist, name)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		h := sha256.Sum256(data)
		if sums[name] != hex.EncodeToString(h[:]) {
			t.Errorf("%s: SHA256SUMS says %q, the file's is %x", name, sums[name], h)
		}
		switch w.format {
		case "elf":
			ef, err := elf.Open(p)
			if err != nil {
				t.Errorf("%s: not ELF: %v", name, err)
				continue
			}
			if ef.Machine != w.arch {
				t.Errorf("%s: machine %v, want %v", name, ef.Machine, w.arch)
			}
			for _, prog := range ef.Progs {
				if prog.Type == elf.PT_INTERP {
					t.Errorf("%s: dynamically linked (has an interpreter)", name)
				}
			}
			ef.Close()
		case "macho":
			mf, err := macho.Open(p)
			if err != nil {
				t.Errorf("%s: not Mach-O: %v", name, err)
				continue
			}
			if mf.Cpu != w.arch {
				t.Errorf("%s: cpu %v, want %v", name, mf.Cpu, w.arch)
			}
			mf.Close()
		case "pe":
			pf, err := pe.Open(p)
			if err != nil {
				t.Errorf("%s: not PE: %v", name, err)
				continue
			}
			if pf.Machine != w.arch {
				t.Errorf("%s: machine %#x, want %#x", name, pf.Machine, w.arch)
			}
			pf.Close()
		}
	}
	for _, b := range []string{"tunneld", "tunnelc"} {
		out, err := exec.Command(filepath.Join(dist, b+"-v9.9.9-test-linux-amd64"), "--version").CombinedOutput()
		want := "version v9.9.9-test ("
		if c := tt.Commit(); c != "" {
			want += "commit " + c
		}
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s --version: %v %q", b, err, out)
		}
	}
}
