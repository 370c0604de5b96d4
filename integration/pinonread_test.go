package integration

import (
	"testing"

	"github.com/taglock/taglock/internal/config"
)

// With immutability.pin_on_read, a pull of an immutable tag gets the digest
// the ledger recorded even after the tag was moved on the upstream directly,
// around taglock; without it, the pull gets whatever the upstream now says.
func TestPinOnReadServesTheRecordedDigest(t *testing.T) {
	t.Parallel()
	for _, pin := range []bool{true, false} {
		e := MustEnv(t, Separate, func(c *config.Config) { c.Immutability.PinOnRead = pin })
		original, other := MustImage(t), MustImage(t)
		MustPush(t, e.Addr, "team/app:1.0.0", original)
		MustPush(t, e.Up.Addr, "team/app:1.0.0", other) // behind taglock's back
		MustPush(t, e.Addr, "team/app:latest", other)
		MustPush(t, e.Up.Addr, "team/app:latest", original)

		want := MustDigest(t, other)
		if pin {
			want = MustDigest(t, original)
		}
		if got := mustServed(t, e.Addr, "team/app:1.0.0"); got != want {
			t.Errorf("pin_on_read=%v: taglock serves team/app:1.0.0 as %s, want %s", pin, got, want)
		}
		// A mutable tag is never pinned: it serves what the upstream holds.
		if got := mustServed(t, e.Addr, "team/app:latest"); got != MustDigest(t, original) {
			t.Errorf("pin_on_read=%v: mutable latest served as %s, want the upstream's %s", pin, got, MustDigest(t, original))
		}
	}
}
