package integration

import (
	"fmt"
	"testing"

	"github.com/taglock/taglock/internal/config"
)

// A pull of an immutable tag gets the digest the ledger recorded even after
// the tag was moved on the upstream directly, around taglock, when either
// immutability.pin_on_read or the manifest cache is on: both answer from
// the ledger. With both off, the pull gets whatever the upstream now says.
// A mutable tag is never pinned.
func TestPinOnReadServesTheRecordedDigest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pin    bool
		cache  config.ByteSize
		pinned bool
	}{
		{pin: true, cache: 0, pinned: true},
		{pin: false, cache: 32 << 20, pinned: true},
		{pin: false, cache: 0, pinned: false},
	} {
		t.Run(fmt.Sprintf("pin_on_read=%v,cache=%s", tc.pin, tc.cache), func(t *testing.T) {
			e := MustEnv(t, Separate, func(c *config.Config) { c.Immutability.PinOnRead, c.Cache.Size = tc.pin, tc.cache })
			original, other := MustImage(t), MustImage(t)
			MustPush(t, e.Addr, "team/app:1.0.0", original)
			MustPush(t, e.Up.Addr, "team/app:1.0.0", other) // behind taglock's back
			MustPush(t, e.Addr, "team/app:latest", other)
			MustPush(t, e.Up.Addr, "team/app:latest", original)

			want := MustDigest(t, other)
			if tc.pinned {
				want = MustDigest(t, original)
			}
			if got := mustServed(t, e.Addr, "team/app:1.0.0"); got != want {
				t.Errorf("taglock serves team/app:1.0.0 as %s, want %s", got, want)
			}
			if got := mustServed(t, e.Addr, "team/app:latest"); got != MustDigest(t, original) {
				t.Errorf("mutable latest served as %s, want the upstream's %s", got, MustDigest(t, original))
			}
		})
	}
}
