package tunneltest

import (
	"fmt"
	"testing"
)

type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// The scan that guards every log of the suite finds a credential in any
// line, and only there.
func TestCheckSecretsFindsCredentials(t *testing.T) {
	other := Secret("another-secret-2b7c9e41")
	r := &recorder{TB: t}
	CheckSecrets(r, "a log", "level=INFO msg=fine\nlevel=WARN token="+Token+"\nmsg=x other="+other+"\n")
	if len(r.errs) != 2 {
		t.Fatalf("found %d credentials, want 2: %q", len(r.errs), r.errs)
	}
	r.errs = nil
	CheckSecrets(r, "a log", "level=INFO msg=\"session up\" client=test-client\n")
	if len(r.errs) != 0 {
		t.Fatalf("clean log flagged: %q", r.errs)
	}
}
