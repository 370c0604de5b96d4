package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// migrate moves the state files an older taglock kept in Dir into the
// ledger's job state, once: the journal of an interrupted run, the
// first-seen times and an owed collection. Each file is renamed with a
// .migrated suffix after its content is in the ledger, so a crash in
// between migrates it again, which writes the same values.
func (r *Runner) migrate(ctx context.Context) error {
	if r.dir == "" || r.migrated.Load() {
		return nil
	}
	files := []struct {
		name    string
		convert func([]byte) (map[string][]byte, error)
	}{
		{"apply.json", func(b []byte) (map[string][]byte, error) {
			var j journal
			if err := json.Unmarshal(b, &j); err != nil {
				return nil, err
			}
			return map[string][]byte{stateJournal: b}, nil
		}},
		{"first-seen.json", func(b []byte) (map[string][]byte, error) {
			var seen map[string]time.Time
			if err := json.Unmarshal(b, &seen); err != nil {
				return nil, err
			}
			out := map[string][]byte{}
			for k, t := range seen {
				out[stateSeen+k] = []byte(t.UTC().Format(time.RFC3339Nano))
			}
			return out, nil
		}},
		{"gc-owed.json", func(b []byte) (map[string][]byte, error) {
			return map[string][]byte{stateGCOwed: []byte(time.Now().UTC().Format(time.RFC3339Nano))}, nil
		}},
	}
	for _, f := range files {
		path := filepath.Join(r.dir, f.name)
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("retention state: %w", err)
		}
		values, err := f.convert(b)
		if err != nil {
			return fmt.Errorf("retention state %s: %w", path, err)
		}
		if f.name == "first-seen.json" {
			// Times already in the ledger were recorded first; keep them.
			have, err := r.ledger.JobStates(ctx, stateSeen)
			if err != nil {
				return fmt.Errorf("retention state: %w", err)
			}
			for k := range have {
				delete(values, k)
			}
		}
		if err := r.ledger.PutJobStates(ctx, values); err != nil {
			return fmt.Errorf("retention state: moving %s into the ledger: %w", path, err)
		}
		if err := os.Rename(path, path+".migrated"); err != nil {
			return fmt.Errorf("retention state: %w", err)
		}
		r.log.Info().Str("file", path).Int("values", len(values)).Msg("retention: moved state from its file into the ledger")
	}
	r.migrated.Store(true)
	return nil
}
