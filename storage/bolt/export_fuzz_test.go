package bolt_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/ledgertest"
)

// FuzzImport ensures that Import never panics on any input; that an input
// it refuses leaves the ledger as it was (here, empty), and one refused
// only for contradicting itself is applied by Force; that whatever it
// stored passes Check; and that the round trip export, import into a fresh
// ledger, export again gives the same bytes, and importing a ledger's own
// export into it changes nothing.
func FuzzImport(f *testing.F) {
	seed := openTemp(f, bolt.Options{})
	ledgertest.Populate(f, seed)
	dump := ledgertest.MustExport(f, seed)
	f.Add(dump)
	for line := range bytes.SplitSeq(dump, []byte("\n")) {
		f.Add(line)
	}
	d := ledgertest.Digest("x").String()
	for _, s := range []string{
		"",
		"\n\n",
		`{"type":"binding","repo":"a","tag":"v1","digest":"` + d + `","mode":"immutable","pushedAt":"2026-01-02T03:04:05+05:00"}`,
		`{"type":"binding","repo":"a","tag":"v1","digest":"` + d + `","mode":"immutable","deleted":true}` + "\n" +
			`{"type":"binding","repo":"a","tag":"v1","digest":"` + d + `","mode":"mutable"}`,
		`{"type":"event","seq":18446744073709551615,"kind":"accepted","repo":"a"}`,
		`{"type":"event","seq":3,"kind":"accepted","repo":"a","tag":"t"}` + "\n" + `{"type":"event","seq":3,"kind":"accepted","repo":"a","tag":"t"}`,
		`{"type":"reservation","id":"r1","repo":"a","tags":["t","t"],"digest":"` + d + `"}`,
		`{"type":"manifest","repo":"a","digest":"` + d + `","children":["` + d + `"]}`,
		`{"type":"pull","repo":"a","digest":"` + d + `","at":"0001-01-01T00:00:00Z"}`,
		`{"type":"binding","type":"event"}`,
		`[{"type":"binding"}]`,
		`{"type":"binding","repo":"a\u0000b","tag":"t","digest":"` + d + `","mode":"immutable"}`,
	} {
		f.Add([]byte(s))
	}
	// Two ledgers for the whole run, emptied before each input: opening
	// new files would cost more than the rest of the work.
	a, b := openTemp(f, bolt.Options{}), openTemp(f, bolt.Options{})
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		for _, l := range []*bolt.Ledger{a, b} {
			if err := l.ResetForTest(); err != nil {
				t.Fatalf("reset: %v", err)
			}
		}
		empty := ledgertest.MustExport(t, a)
		_, importErr := a.Import(ctx, bytes.NewReader(data), storage.ImportOptions{})
		if importErr != nil {
			if got := ledgertest.MustExport(t, a); !bytes.Equal(got, empty) {
				t.Fatalf("importing %q failed (%v) but wrote:\n%s", data, importErr, got)
			}
			var ce *storage.ContradictionError
			if errors.As(importErr, &ce) {
				if _, err := a.Import(ctx, bytes.NewReader(data), storage.ImportOptions{Force: true}); err != nil {
					t.Fatalf("importing %q with Force after it contradicted itself: %v", data, err)
				}
			}
		}
		if problems, err := a.Check(ctx); err != nil {
			t.Fatalf("after importing %q (import error: %v) the ledger has problems: %v %q", data, importErr, err, problems)
		}
		first := ledgertest.MustExport(t, a)

		if _, err := b.Import(ctx, bytes.NewReader(first), storage.ImportOptions{}); err != nil {
			t.Fatalf("importing an export failed: %v\nexport:\n%s", err, first)
		}
		if again := ledgertest.MustExport(t, b); !bytes.Equal(again, first) {
			t.Fatalf("export, import, export is not stable:\nfirst:\n%s\nagain:\n%s", first, again)
		}
		if _, err := a.Import(ctx, bytes.NewReader(first), storage.ImportOptions{}); err != nil {
			t.Fatalf("importing a ledger's own export into it failed: %v\nexport:\n%s", err, first)
		}
		if again := ledgertest.MustExport(t, a); !bytes.Equal(again, first) {
			t.Fatalf("importing a ledger's own export changed it:\nbefore:\n%s\nafter:\n%s", first, again)
		}
	})
}
