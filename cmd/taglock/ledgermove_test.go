package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/ledger"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
	"github.com/taglock/taglock/storage/ledgertest"
)

// runWith runs one taglock command with stdin and returns stdout, stderr
// and the exit code main would use.
func runWith(t *testing.T, stdin []byte, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(bytes.NewReader(stdin))
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
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
	return out.String(), errb.String(), code
}

// writeConfig writes a config file with the given ledger section and
// returns its path.
func writeConfig(t *testing.T, data, ledgerSection string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "taglock.yaml")
	y := fmt.Sprintf("data: %s\nlog:\n  level: error\n%s", data, ledgerSection)
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLedgerMovesToEtcdAndBack ensures that `taglock ledger export` from a
// bolt ledger piped into `taglock ledger import -` with a config naming an
// etcd ledger moves every record, that the commands work on the etcd
// ledger directly (check, backup, export, import refusing a contradiction),
// and that moving it back into a new bolt file gives the same export byte
// for byte.
func TestLedgerMovesToEtcdAndBack(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Start(t, 1)
	boltConf := writeConfig(t, filepath.Join(t.TempDir(), "data"), "")
	etcdConf := writeConfig(t, filepath.Join(t.TempDir(), "unused"),
		fmt.Sprintf("ledger:\n  backend: etcd\n  endpoints: [%s]\n  prefix: /moved/\nembedded:\n  unsafe_local_storage_for_tests: true\n", cluster.Endpoints()[0]))
	backConf := writeConfig(t, filepath.Join(t.TempDir(), "back"), "")

	cfg, err := config.Load(boltConf)
	if err != nil {
		t.Fatal(err)
	}
	src, err := ledger.Open(context.Background(), cfg, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ledgertest.Populate(t, src)
	big := ledgertest.NewBinding("app", "big", "big")
	big.Manifest = bytes.Repeat([]byte("x"), ledgertest.MaxManifest)
	ledgertest.MustPut(t, src, []storage.Binding{big})
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}

	must := func(stdin []byte, args ...string) string {
		t.Helper()
		out, errs, code := runWith(t, stdin, args...)
		if code != 0 {
			t.Fatalf("taglock %s: exit %d\n%s", strings.Join(args, " "), code, errs)
		}
		return out
	}
	export := must(nil, "--config", boltConf, "ledger", "export")
	if out := must([]byte(export), "--config", etcdConf, "ledger", "import", "-"); !strings.Contains(out, "imported 5 bindings, 4 events, 2 manifests, 2 pulls, 2 reservations") {
		t.Errorf("import into etcd said %q", out)
	}
	if got := must(nil, "--config", etcdConf, "ledger", "export"); got != export {
		t.Fatalf("the etcd ledger exports differently from the bolt ledger it was imported from")
	}
	if out := must(nil, "--config", etcdConf, "ledger", "check"); !strings.Contains(out, "etcd prefix /moved/") || !strings.Contains(out, ": ok") {
		t.Errorf("ledger check on etcd said %q", out)
	}
	backup := filepath.Join(t.TempDir(), "backup.jsonl")
	must(nil, "--config", etcdConf, "ledger", "backup", backup)
	if b, err := os.ReadFile(backup); err != nil || string(b) != export {
		t.Errorf("an etcd backup is its export: got %d bytes, %v", len(b), err)
	}
	forged := strings.Replace(export, string(ledgertest.Digest("one")), string(ledgertest.Digest("forged")), 1)
	if _, errs, code := runWith(t, []byte(forged), "--config", etcdConf, "ledger", "import", "-"); code != exitFailure || !strings.Contains(errs, "ledger import refused") {
		t.Errorf("a contradicting import into etcd: exit %d, %q; want refused", code, errs)
	}

	must([]byte(must(nil, "--config", etcdConf, "ledger", "export")), "--config", backConf, "ledger", "import", "-")
	if got := must(nil, "--config", backConf, "ledger", "export"); got != export {
		t.Fatal("bolt -> etcd -> bolt changed the export")
	}
}

// TestCommandsUseServeOnEtcd ensures that with the ledger on etcd and serve
// running on the data directory, the commands still go through serve's
// admin socket, which owns the embedded registry and retention state,
// rather than opening the registry a second time: the import's audit event
// names the user on the admin socket. Without serve they reach etcd
// directly.
func TestCommandsUseServeOnEtcd(t *testing.T) {
	t.Parallel()
	cluster := etcdtest.Start(t, 1)
	e := ltNewEnv(t)
	e.up.put(t, "team/app", "1.0", "one")
	e.cfg.Ledger.Backend, e.cfg.Ledger.Endpoints = config.BackendEtcd, cluster.Endpoints()
	auditFile := filepath.Join(t.TempDir(), "audit.jsonl")
	e.cfg.Log.Audit = auditFile
	e.serve(t)
	conf, err := os.ReadFile(e.conf)
	if err != nil {
		t.Fatal(err)
	}
	conf = append(conf, fmt.Sprintf("ledger:\n  backend: etcd\n  endpoints: [%s]\n", cluster.Endpoints()[0])...)
	if err := os.WriteFile(e.conf, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.mustRun(t, 0, "import"); !strings.Contains(out, "adopted 1") {
		t.Errorf("import through serve: %s", out)
	}
	user := fmt.Sprintf("(uid %d, pid %d) on the admin socket", os.Getuid(), os.Getpid())
	if ev := auditEvents(t, auditFile, "upstream-imported"); len(ev) != 1 || !strings.HasSuffix(fmt.Sprint(ev[0]["user"]), user) {
		t.Errorf("upstream-imported events: %v, want the user %q", ev, user)
	}
	e.stop(t)
	if out := e.mustRun(t, 0, "resolve", "team/app:1.0"); !strings.Contains(out, "team/app:1.0@sha256:") {
		t.Errorf("resolve on etcd without serve: %s", out)
	}
}
