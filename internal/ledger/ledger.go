// Package ledger opens the ledger backend the configuration names. It is
// the one place that knows the backends: serve and the commands get a
// storage.Ledger from Open and never name a backend's type.
//
// It decides nothing about tags and holds no state; it only builds what
// config.Ledger describes, reading the files it names (TLS material, a
// password file).
package ledger

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/cluster"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/etcd"
)

// Options configures Open. The zero value opens the ledger for writing.
type Options struct {
	// ReadOnly opens the ledger for reading only: writes fail with
	// storage.ErrReadOnly. The bolt file must then exist, and other
	// read-only openers may share it. Default false.
	ReadOnly bool
	// LockTimeout is how long Open waits for the bolt file's lock before
	// it fails with storage.ErrLocked. Zero means bolt's default (1s); a
	// negative value means try once. etcd has no lock.
	LockTimeout time.Duration
	// Log receives what the backend reports without failing a call.
	// Default zerolog.Nop().
	Log zerolog.Logger
}

// BoltPath is where the bolt ledger lives under the data directory.
func BoltPath(data string) string { return filepath.Join(data, "ledger.db") }

// Shared reports whether the ledger cfg names is shared by every process
// that opens it (etcd) rather than held by one at a time (the bolt file),
// so that no lock tells the commands whether serve runs.
func Shared(cfg config.Config) bool { return cfg.Ledger.Backend == config.BackendEtcd }

// Open opens the ledger cfg names: the bolt file in cfg.Data, or the etcd
// cluster of cfg.Ledger. The config must have passed Validate. An etcd
// ledger whose cluster does not answer within ledger.dial_timeout and
// ledger.request_timeout fails to open.
func Open(ctx context.Context, cfg config.Config, o Options) (storage.Ledger, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.Ledger.Backend != config.BackendEtcd {
		l, err := bolt.Open(BoltPath(cfg.Data), bolt.Options{ReadOnly: o.ReadOnly, LockTimeout: o.LockTimeout})
		if err != nil {
			return nil, err // not a nil *bolt.Ledger in a non-nil interface
		}
		return l, nil
	}
	lc := cfg.Ledger
	tlsCfg, err := clientTLS(lc)
	if err != nil {
		return nil, err
	}
	password := lc.Password
	if lc.PasswordFile != "" {
		b, err := os.ReadFile(lc.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("ledger.password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	l, err := etcd.Open(ctx, etcd.Options{
		Endpoints:      lc.Endpoints,
		Prefix:         lc.Prefix,
		DialTimeout:    lc.DialTimeout.Std(),
		RequestTimeout: lc.RequestTimeout.Std(),
		TLS:            tlsCfg,
		Username:       lc.Username,
		Password:       password,
		ReadOnly:       o.ReadOnly,
		Log:            o.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Describe(cfg), err)
	}
	return l, nil
}

// Join makes this process a member of the replicas sharing the ledger l,
// opened by Open from cfg, under the name owner (its reservations' Owner):
// an etcd ledger's replicas coordinate through package cluster. With the
// bolt backend one process holds the ledger, so there is nothing to join:
// Join returns nil, and that process is the only replica and runs every
// job.
//
// A command run by hand joins with observer set: it takes locks and sees
// who is alive, but is not counted alive and never runs the jobs.
func Join(ctx context.Context, cfg config.Config, l storage.Ledger, owner string, observer bool, log zerolog.Logger) (*cluster.Cluster, error) {
	el, ok := l.(*etcd.Ledger)
	if !ok {
		return nil, nil
	}
	c, err := cluster.Join(ctx, cluster.Options{Client: el.Client(), Prefix: el.Prefix(), Owner: owner,
		TTL: cfg.Ledger.LeaseTTL.Std(), RequestTimeout: cfg.Ledger.RequestTimeout.Std(), Log: log, Observer: observer})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Describe(cfg), err)
	}
	return c, nil
}

// clientTLS builds the etcd client's TLS configuration: nil unless an
// endpoint is https.
func clientTLS(lc config.Ledger) (*tls.Config, error) {
	https := false
	for _, e := range lc.Endpoints {
		https = https || strings.HasPrefix(e, "https://")
	}
	if !https {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if lc.TLS.CA != "" {
		pem, err := os.ReadFile(lc.TLS.CA)
		if err != nil {
			return nil, fmt.Errorf("ledger.tls.ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errors.New("ledger.tls.ca: no PEM certificates in " + lc.TLS.CA)
		}
	}
	if lc.TLS.Cert != "" {
		pair, err := tls.LoadX509KeyPair(lc.TLS.Cert, lc.TLS.Key)
		if err != nil {
			return nil, fmt.Errorf("ledger.tls.cert: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// Describe names the ledger cfg configures, for messages: its file, or its
// etcd endpoints and prefix.
func Describe(cfg config.Config) string {
	if cfg.Ledger.Backend == config.BackendEtcd {
		return fmt.Sprintf("etcd prefix %s at %s", cfg.Ledger.Prefix, strings.Join(cfg.Ledger.Endpoints, ","))
	}
	return BoltPath(cfg.Data)
}

// CheckBackup verifies a file Backup wrote for the ledger cfg names. A bolt
// backup must open as a ledger and pass Check. An etcd backup is an export:
// every record must parse and be one Import would accept.
func CheckBackup(ctx context.Context, cfg config.Config, path string) error {
	if cfg.Ledger.Backend == config.BackendEtcd {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := storage.ReadImport(f); err != nil {
			return fmt.Errorf("backup is not an export import accepts: %w", err)
		}
		return ctx.Err()
	}
	l, err := bolt.Open(path, bolt.Options{ReadOnly: true, LockTimeout: -1})
	if err != nil {
		return fmt.Errorf("backup does not open as a ledger: %w", err)
	}
	defer l.Close()
	if problems, err := l.Check(ctx); err != nil {
		return fmt.Errorf("backup fails the ledger check (%d problems): %w", len(problems), err)
	}
	return nil
}
