package ledger

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
	"github.com/taglock/taglock/storage/ledgertest"
)

// TestOpenByConfig ensures that Open gives the bolt file in the data
// directory by default and the etcd ledger the config names otherwise,
// that both keep what was written across a reopen, and that Describe and
// Shared tell them apart.
func TestOpenByConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	boltCfg := config.Default()
	boltCfg.Data = t.TempDir()
	etcdCfg := config.Default()
	etcdCfg.Ledger.Backend, etcdCfg.Ledger.Endpoints, etcdCfg.Ledger.Prefix = config.BackendEtcd, cluster.Endpoints(), "/open/"
	passwordless := etcdCfg
	for _, cfg := range []config.Config{boltCfg, etcdCfg} {
		l, err := Open(ctx, cfg, Options{})
		if err != nil {
			t.Fatal(err)
		}
		ledgertest.MustPut(t, l, []storage.Binding{ledgertest.NewBinding("r", "v1", "one")})
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l, err = Open(ctx, cfg, Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		ledgertest.MustBinding(t, l, "r", "v1")
		if err := l.Put(ctx, []storage.Binding{ledgertest.NewBinding("r", "v2", "two")}, nil); !errors.Is(err, storage.ErrReadOnly) {
			t.Errorf("%s: Put on a read-only ledger: %v, want ErrReadOnly", Describe(cfg), err)
		}
		_ = l.Close()
	}
	if _, err := os.Stat(filepath.Join(boltCfg.Data, "ledger.db")); err != nil {
		t.Errorf("bolt ledger file: %v", err)
	}
	if Shared(boltCfg) || !Shared(etcdCfg) {
		t.Error("Shared: want false for bolt, true for etcd")
	}
	if d := Describe(etcdCfg); !strings.Contains(d, "/open/") || !strings.Contains(d, cluster.Endpoints()[0]) {
		t.Errorf("Describe = %q, want the prefix and endpoints", d)
	}

	passwordless.Ledger.Username, passwordless.Ledger.PasswordFile = "taglock", filepath.Join(t.TempDir(), "missing")
	if _, err := Open(ctx, passwordless, Options{}); err == nil || !strings.Contains(err.Error(), "ledger.password_file") {
		t.Errorf("Open with a missing password file: %v", err)
	}
	tlsCfg := etcdCfg
	tlsCfg.Ledger.Endpoints, tlsCfg.Ledger.TLS.CA = []string{"https://127.0.0.1:1"}, filepath.Join(t.TempDir(), "missing.pem")
	if _, err := Open(ctx, tlsCfg, Options{}); err == nil || !strings.Contains(err.Error(), "ledger.tls.ca") {
		t.Errorf("Open with a missing CA: %v", err)
	}
	down := etcdCfg
	down.Ledger.Endpoints = []string{"http://127.0.0.1:1"}
	down.Ledger.DialTimeout, down.Ledger.RequestTimeout = config.Duration(200*time.Millisecond), config.Duration(200*time.Millisecond)
	start := time.Now()
	if _, err := Open(ctx, down, Options{}); err == nil {
		t.Error("Open of an etcd ledger nobody serves succeeded")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Open of an etcd ledger nobody serves took %s", took)
	}
}

// TestCheckBackup ensures that a backup is checked in its backend's
// format: a bolt file must open and pass Check, an etcd backup must be an
// export import accepts.
func TestCheckBackup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	boltCfg, etcdCfg := config.Default(), config.Default()
	etcdCfg.Ledger.Backend = config.BackendEtcd
	dir := t.TempDir()
	export := filepath.Join(dir, "export.jsonl")
	if err := os.WriteFile(export, []byte(`{"type":"manifest","repo":"r","digest":"`+string(ledgertest.Digest("m"))+`"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckBackup(ctx, etcdCfg, export); err != nil {
		t.Errorf("CheckBackup of an export for etcd: %v", err)
	}
	if err := CheckBackup(ctx, boltCfg, export); err == nil {
		t.Error("CheckBackup of an export for bolt succeeded")
	}
	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte(`{"type":"tag"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckBackup(ctx, etcdCfg, bad); err == nil {
		t.Error("CheckBackup of a broken export succeeded")
	}
}
