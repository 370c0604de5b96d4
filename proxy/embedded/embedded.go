// Package embedded runs CNCF Distribution in-process as taglock's registry
// when no upstream is configured.
//
// It owns the registry's configuration (filesystem storage under the data
// directory, or the storage driver the caller names, such as S3 that
// several replicas share; deletes enabled, redirects off, a persistent
// upload secret) and routes Distribution's logrus output into zerolog. It must not make
// policy decisions: every request reaches it through package proxy.
package embedded

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the default
	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"
	"go.yaml.in/yaml/v3"
)

// Registry is an embedded Distribution registry.
type Registry struct {
	app  *handlers.App
	root string
}

// Options configures New.
type Options struct {
	// Root is the local directory: the filesystem storage under
	// Root/data, unless Storage names another driver, and the upload
	// secret. Required.
	Root string
	// Storage, when set, is Distribution's storage driver section: one
	// driver name of Drivers and its parameters, passed as they are,
	// such as {"s3": {"region": "eu-west-1", "bucket": "registry"}}.
	// Default nil: filesystem under Root/data.
	Storage map[string]map[string]any
	// SecretFile is a file holding the secret that signs upload state.
	// Replicas behind one load balancer must share it, so that an upload
	// started on one continues on another. Default "": Root/http.secret,
	// created with a random secret when missing.
	SecretFile string
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
	secretFile := o.SecretFile
	if secretFile == "" {
		secretFile = filepath.Join(o.Root, "http.secret")
	}
	secret, err := loadSecret(secretFile, o.SecretFile == "")
	if err != nil {
		return nil, err
	}
	doc, err := configYAML(o, secret)
	if err != nil {
		return nil, err
	}
	cfg, err := configuration.Parse(bytes.NewReader(doc))
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

// configYAML is the registry's configuration document.
func configYAML(o Options, secret string) ([]byte, error) {
	storage := map[string]any{
		"delete":   map[string]any{"enabled": true},
		"redirect": map[string]any{"disable": true},
		"maintenance": map[string]any{"uploadpurging": map[string]any{
			"enabled": true, "age": "168h", "interval": "24h", "dryrun": false}},
	}
	switch len(o.Storage) {
	case 0:
		storage["filesystem"] = map[string]any{"rootdirectory": filepath.Join(o.Root, "data")}
	case 1:
		for name, params := range o.Storage {
			if tag, ok := OptionalDrivers[name]; ok && !slices.Contains(Drivers, name) {
				return nil, fmt.Errorf("embedded registry: storage driver %q is not in this build of taglock: build it with "+
					"`go build -tags %s ./cmd/taglock` (make build GOTAGS=%s, docker build --build-arg GOTAGS=%s)", name, tag, tag, tag)
			}
			if !slices.Contains(Drivers, name) {
				return nil, fmt.Errorf("embedded registry: storage driver %q is not one of %s", name, strings.Join(Drivers, ", "))
			}
			if params == nil {
				params = map[string]any{}
			}
			storage[name] = params
		}
	default:
		return nil, fmt.Errorf("embedded registry: storage names %d drivers, want one", len(o.Storage))
	}
	return yaml.Marshal(map[string]any{
		"version": "0.1",
		"log":     map[string]any{"level": "warn", "accesslog": map[string]any{"disabled": true}},
		"storage": storage,
		"http":    map[string]any{"addr": "127.0.0.1:0", "secret": secret},
	})
}

// Driver is the storage driver o configures: "filesystem" by default.
func (o Options) Driver() string {
	for name := range o.Storage {
		return name
	}
	return "filesystem"
}

// loadSecret keeps the secret that signs upload state across restarts, so an
// upload in progress survives one. A missing or short secret is generated
// when create is set, and is an error otherwise (a file the operator gave).
func loadSecret(path string, create bool) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("embedded registry: secret: %w", err)
	}
	if !create {
		return "", fmt.Errorf("embedded registry: secret file %s must hold a secret of at least 32 characters", path)
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
