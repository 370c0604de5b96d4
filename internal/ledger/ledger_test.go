package ledger

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

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

// TestOpenEtcdWithAuthentication ensures that ledger.username and
// ledger.password_file authenticate to an etcd cluster with
// authentication on, as a user whose role may only use the ledger's
// prefix, and that a wrong password does not open the ledger.
func TestOpenEtcdWithAuthentication(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	c, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, step := range []func() error{
		func() error { _, err := c.RoleAdd(ctx, "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.RoleAdd(ctx, "taglock"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "taglock", "/taglock/", clientv3.GetPrefixRangeEnd("/taglock/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := c.UserAdd(ctx, "taglock", "s3cret"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "taglock", "taglock"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Ledger.Backend, cfg.Ledger.Endpoints = config.BackendEtcd, cluster.Endpoints()
	cfg.Ledger.Username, cfg.Ledger.PasswordFile = "taglock", pw
	l, err := Open(ctx, cfg, Options{})
	if err != nil {
		t.Fatalf("Open with the password file: %v", err)
	}
	ledgertest.MustPut(t, l, []storage.Binding{ledgertest.NewBinding("r", "v1", "one")})
	_ = l.Close()
	cfg.Ledger.PasswordFile, cfg.Ledger.Password = "", "wrong"
	cfg.Ledger.DialTimeout, cfg.Ledger.RequestTimeout = config.Duration(time.Second), config.Duration(time.Second)
	if l, err := Open(ctx, cfg, Options{}); err == nil {
		_ = l.Close()
		t.Error("Open with a wrong password succeeded")
	}
}
