// Package embedded runs CNCF Distribution in-process as taglock's registry
// when no upstream is configured.
//
// It owns the registry's configuration (filesystem storage under the data
// directory, deletes enabled, redirects off, a persistent upload secret)
// and routes Distribution's logrus output into zerolog. It must not make
// policy decisions: every request reaches it through package proxy.
package embedded

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the only driver taglock embeds
	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"
)

// Registry is an embedded Distribution registry.
type Registry struct {
	app  *handlers.App
	root string
}

// Options configures New.
type Options struct {
	// Root is the storage directory. Required.
	Root string
	// Log receives Distribution's own log lines. Its request logging,
	// which includes every answer with an error code such as a 404 for a
	// blob a client checks before uploading it, goes to debug (taglock
	// logs each request itself); answers of 500 and above and its other
	// errors stay errors. Default zerolog.Nop().
	Log zerolog.Logger
}

// New starts an embedded registry storing under o.Root.
func New(ctx context.Context, o Options) (r *Registry, err error) {
	if o.Root == "" {
		return nil, errors.New("embedded registry: no storage directory")
	}
	if err := os.MkdirAll(o.Root, 0o750); err != nil {
		return nil, fmt.Errorf("embedded registry: %w", err)
	}
	secret, err := loadSecret(filepath.Join(o.Root, "http.secret"))
	if err != nil {
		return nil, err
	}
	cfg, err := configuration.Parse(strings.NewReader(fmt.Sprintf(`
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: true
      age: 168h
      interval: 24h
      dryrun: false
http:
  addr: 127.0.0.1:0
  secret: %q
`, filepath.Join(o.Root, "data"), secret)))
	if err != nil {
		return nil, fmt.Errorf("embedded registry: config: %w", err)
	}
	routeLogs(o.Log)
	if os.Getenv("OTEL_TRACES_EXPORTER") == "" {
		_ = os.Setenv("OTEL_TRACES_EXPORTER", "none")
	}
	// NewApp panics on configuration errors; turn that into an error.
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("embedded registry: %v", p)
		}
	}()
	app := handlers.NewApp(ctx, cfg)
	return &Registry{app: app, root: o.Root}, nil
}

// Handler is the registry's http.Handler.
func (r *Registry) Handler() http.Handler { return r.app }

// Root is the storage directory.
func (r *Registry) Root() string { return r.root }

// Shutdown stops the registry's background work.
func (r *Registry) Shutdown() error { return r.app.Shutdown() }

// loadSecret keeps the secret that signs upload state across restarts, so an
// upload in progress survives one.
func loadSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("embedded registry: secret: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	s := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("embedded registry: secret: %w", err)
	}
	return s, nil
}

var (
	routeMu  sync.Mutex
	routeDst = zerolog.Nop()
)

// routeLogs sends logrus's standard logger, which Distribution logs through,
// to log. logrus is process-wide, so the most recent registry's logger wins.
func routeLogs(log zerolog.Logger) {
	routeMu.Lock()
	defer routeMu.Unlock()
	routeDst = log.With().Str("component", "distribution").Logger()
	std := logrus.StandardLogger()
	std.SetLevel(logrus.WarnLevel)
	std.SetOutput(discard{})
	std.ReplaceHooks(logrus.LevelHooks{})
	std.AddHook(hook{})
}

type hook struct{}

func (hook) Levels() []logrus.Level { return logrus.AllLevels }

func (hook) Fire(e *logrus.Entry) error {
	routeMu.Lock()
	log := routeDst
	routeMu.Unlock()
	ev := log.WithLevel(level(e))
	for k, v := range e.Data {
		if k == "go.version" {
			continue
		}
		ev = ev.Interface(k, v)
	}
	ev.Msg(e.Message)
	return nil
}

// level is the zerolog level of a Distribution log entry. Distribution
// logs every answer carrying an error code at error level ("response
// completed with error"), the 404s of a normal push included: those are
// request logging, at debug, and so is a client that went away mid-upload.
// Answers of 500 and above, and errors about anything but an answer, stay
// errors.
func level(e *logrus.Entry) zerolog.Level {
	switch e.Level {
	case logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel:
		if status, ok := responseStatus(e.Data); ok && status < 500 {
			return zerolog.DebugLevel
		}
		if strings.HasPrefix(e.Message, "client disconnected") {
			return zerolog.DebugLevel
		}
		return zerolog.ErrorLevel
	case logrus.WarnLevel:
		return zerolog.WarnLevel
	}
	return zerolog.DebugLevel
}

// responseStatus is the HTTP status an entry about an answer carries.
func responseStatus(data logrus.Fields) (int, bool) {
	switch v := data["http.response.status"].(type) {
	case int:
		return v, v > 0
	case int64:
		return int(v), v > 0
	}
	return 0, false
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
