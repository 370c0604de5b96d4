// Package ledger opens the ledger backend the configuration names. It is
// the one place that knows the backends: serve and the commands get a
// storage.Ledger from Open and never name a backend's type.
//
// It decides nothing about tags and holds no state; it only builds what
// config.Ledger describes.
package ledger

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// Options configures Open. The zero value opens the ledger for writing.
type Options struct {
	// ReadOnly opens the ledger for reading only: writes fail with
	// storage.ErrReadOnly. The bolt file must then exist, and other
	// read-only openers may share it. Default false.
	ReadOnly bool
	// LockTimeout is how long Open waits for the bolt file's lock before
	// it fails with storage.ErrLocked. Zero means bolt's default (1s); a
	// negative value means try once.
	LockTimeout time.Duration
	// Log receives what the backend reports without failing a call.
	// Default zerolog.Nop().
	Log zerolog.Logger
}

// BoltPath is where the bolt ledger lives under the data directory.
func BoltPath(data string) string { return filepath.Join(data, "ledger.db") }

// Open opens the ledger cfg names: the bolt file in cfg.Data (default).
// The config must have passed Validate.
func Open(ctx context.Context, cfg config.Config, o Options) (storage.Ledger, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return bolt.Open(BoltPath(cfg.Data), bolt.Options{ReadOnly: o.ReadOnly, LockTimeout: o.LockTimeout})
}

// Describe names the ledger cfg configures, for messages: its file.
func Describe(cfg config.Config) string { return BoltPath(cfg.Data) }

// CheckBackup verifies a file Backup wrote for the ledger cfg names: the
// bolt file opens as a ledger and passes Check.
func CheckBackup(ctx context.Context, cfg config.Config, path string) error {
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
