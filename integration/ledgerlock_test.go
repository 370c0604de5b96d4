package integration

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/storage"
)

// TestSecondTaglockOnSameDataFailsFast ensures that a second taglock
// started on the data directory of a running one gives up within a couple
// of seconds, with an error that says the ledger is locked and asks whether
// another taglock serves that directory, and that the first one is
// undisturbed.
func TestSecondTaglockOnSameDataFailsFast(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		img := MustImage(t)
		MustPush(t, e.Addr, "team/app:v1", img)

		start := time.Now()
		second, err := server.Start(t.Context(), e.cfg, zerolog.Nop())
		took := time.Since(start)
		if err == nil {
			shutdown(t, second)
			t.Fatal("a second taglock started on the same data directory")
		}
		if !errors.Is(err, storage.ErrLocked) || !strings.Contains(err.Error(), "is another taglock serving "+e.Data) {
			t.Errorf("second start: %v; want ErrLocked asking whether another taglock serves %s", err, e.Data)
		}
		if took > 3*time.Second {
			t.Errorf("the second start gave up after %v, want within 3s", took)
		}
		e.wantServed(t, "team/app:v1", MustDigest(t, img))
		MustPush(t, e.Addr, "team/app:v2", MustImage(t))
	})
}
