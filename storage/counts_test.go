package storage

import (
	"encoding/json"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/taglock/taglock/policy"
)

// TestCountsAddJSON ensures a stored binding's JSON is counted as the
// decoded binding would be, whatever its strings hold, that JSON written
// some other way is decoded, and that what does not decode counts
// nothing.
func TestCountsAddJSON(t *testing.T) {
	t.Parallel()
	base := Binding{Repo: "app", Tag: "v1", Digest: digest.FromString("one"), Mode: policy.Immutable, PushedAt: time.Unix(0, 0).UTC(),
		PushedBy: "ci", Closure: []digest.Digest{digest.FromString("layer")}, Manifest: []byte(`{"mode":"warn","deleted":true}`)}
	tricky := base
	tricky.Tag, tricky.Rule = `v1"mode":"warn","deleted":true`, `"mode":"mutable"`
	gone := base
	gone.Mode, gone.Deleted, gone.DeletedAt = policy.Warn, true, time.Unix(60, 0).UTC()
	bare := base
	bare.Mode, bare.Manifest, bare.Closure = policy.Mutable, nil, nil
	record := struct { // a backend's record embedding the binding, as etcd's
		Binding
		Gen string `json:"gen"`
	}{gone, "0a1b"}
	tests := []struct {
		name string
		v    []byte
		want Counts
		ok   bool
	}{
		{"immutable with its manifest", mustJSON(t, base), Counts{Immutable: 1}, true},
		{"quotes in its strings", mustJSON(t, tricky), Counts{Immutable: 1}, true},
		{"a tombstone", mustJSON(t, gone), Counts{Deleted: 1}, true},
		{"no manifest, no closure", mustJSON(t, bare), Counts{Mutable: 1}, true},
		{"a record embedding it", mustJSON(t, record), Counts{Deleted: 1}, true},
		{"spaced by hand", []byte(`{"repo": "app", "tag": "x", "mode": "warn"}`), Counts{Warn: 1}, true},
		{"an unknown mode", []byte(`{"mode":"evil"}`), Counts{}, true},
		{"not JSON", []byte(`{`), Counts{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c Counts
			if ok := c.AddJSON(tc.v); ok != tc.ok || c != tc.want {
				t.Errorf("AddJSON(%s) = %+v, %v; want %+v, %v", tc.v, c, ok, tc.want, tc.ok)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
