package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/internal/server"
)

// runWithin runs one taglock command like e.run, but gives up after d: a
// serve that started instead of failing is stopped and reported.
func (e *ltEnv) runWithin(t *testing.T, d time.Duration, args ...string) (stderr string, code int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"--config", e.conf}, args...))
	start := time.Now()
	err := root.ExecuteContext(ctx)
	took = time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("taglock %s was still running after %v (stderr %q)", strings.Join(args, " "), d, errb.String())
	}
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
		errb.WriteString(ee.msg)
	default:
		code = 1
		errb.WriteString(err.Error())
	}
	return errb.String(), code, took
}

// TestServeRefusesDamagedLedger ensures that serve refuses to start, within
// seconds, on a ledger file that is garbage, truncated, empty, a bbolt file
// of another program, or missing a bucket, with a message that says the
// ledger is corrupt and points to `taglock ledger check` and to restoring a
// copy made by `taglock ledger backup`; that ledger check explains too; and
// that following the advice works: with the backup in place, serve starts
// and the ledger has its records again.
func TestServeRefusesDamagedLedger(t *testing.T) {
	t.Parallel()
	damages := map[string]func(t *testing.T, path, backup string){
		"garbage": func(t *testing.T, path, _ string) {
			b := make([]byte, 64<<10)
			_, _ = rand.Read(b)
			mustWrite(t, path, b)
		},
		"truncated a page short of its data": func(t *testing.T, path, backup string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(backup) // a backup ends where the data does
			if err != nil {
				t.Fatal(err)
			}
			mustWrite(t, path, b[:st.Size()-4096])
		},
		"empty": func(t *testing.T, path, _ string) { mustWrite(t, path, nil) },
		"another program's bbolt file": func(t *testing.T, path, _ string) {
			mustWrite(t, path, nil)
			editBoltFile(t, path, func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("settings")); return err })
		},
		"missing its bindings bucket": func(t *testing.T, path, _ string) {
			editBoltFile(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("bindings")) })
		},
	}
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := ltNewEnv(t)
			e.up.put(t, "app", "1.0", "one")
			e.mustRun(t, 0, "import")
			backup := t.TempDir() + "/ledger.backup"
			e.mustRun(t, 0, "ledger", "backup", backup)
			path := server.LedgerPath(e.data)
			damage(t, path, backup)

			errs, code, took := e.runWithin(t, 10*time.Second, "serve", "--listen", "127.0.0.1:0")
			t.Logf("serve said: %s", errs)
			if code != exitFailure || took > 5*time.Second {
				t.Errorf("serve on a damaged ledger: exit %d after %v, want 1 within seconds (stderr %q)", code, took, errs)
			}
			for _, want := range []string{path, "ledger is corrupt", "taglock ledger check", "taglock ledger backup"} {
				if !strings.Contains(errs, want) {
					t.Errorf("serve's message %q does not say %q", errs, want)
				}
			}
			errs, code, _ = e.runWithin(t, 10*time.Second, "ledger", "check")
			if code != exitFailure || !strings.Contains(errs, "ledger is corrupt") || !strings.Contains(errs, "taglock ledger backup") {
				t.Errorf("ledger check on a damaged ledger: exit %d, stderr %q; want 1 and advice to restore a backup", code, errs)
			}

			b, err := os.ReadFile(backup)
			if err != nil {
				t.Fatal(err)
			}
			mustWrite(t, path, b)
			e.serve(t)
			defer e.stop(t)
			if got, err := e.srv.Ledger().Binding(t.Context(), "app", "1.0"); err != nil || got.Digest == "" {
				t.Errorf("after restoring the backup, app:1.0 = %+v, %v; want its binding", got, err)
			}
		})
	}
}

// TestSecondServeFailsFast ensures that a second serve on a data directory
// another serve is using gives up within a couple of seconds, saying the
// ledger is locked and asking whether another taglock serves the directory,
// and that the first one keeps serving.
func TestSecondServeFailsFast(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	e.serve(t)
	defer e.stop(t)
	errs, code, took := e.runWithin(t, 10*time.Second, "serve", "--listen", "127.0.0.1:0")
	if code != exitFailure || took > 3*time.Second {
		t.Errorf("second serve: exit %d after %v, want 1 within 3s (stderr %q)", code, took, errs)
	}
	for _, want := range []string{"locked by another process", "is another taglock serving " + e.data} {
		if !strings.Contains(errs, want) {
			t.Errorf("second serve's message %q does not say %q", errs, want)
		}
	}
	if _, err := e.srv.Ledger().Binding(t.Context(), "app", "none"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("the first serve's ledger after the second gave up: %v", err)
	}
}

func mustWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// editBoltFile changes a file with bbolt itself, below the ledger's checks.
func editBoltFile(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}
