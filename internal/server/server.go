// Package server wires taglock together: configuration, ledger, upstream
// (embedded or remote), proxy, the HTTP listener and the admin socket.
// cmd/taglock and the in-process integration tests both start taglock
// through it.
//
// The TCP listener serves the registry API, health and metrics, and the
// ledger's read API and web page behind the registry's authentication; it
// answers anything under /taglock/v1/admin/ with 404. The admin API, and
// the read API showing everything, are served only on the Unix socket
// admin.socket, whose file permissions decide who may use them. No peer
// address, header or host name grants anything.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/internal/ledger"
	"github.com/taglock/taglock/internal/web"
	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/proxy/embedded"
	"github.com/taglock/taglock/storage"
)

// Server is a running taglock.
type Server struct {
	cfg       config.Config
	log       zerolog.Logger
	ledger    storage.Ledger
	registry  *embedded.Registry
	proxy     *proxy.Server
	up        proxy.Upstream
	http      *http.Server
	ln        net.Listener
	admin     *adminSocket
	done      chan error
	audit     zerolog.Logger    // audit events: the log, and the file log.audit names
	auditFile *auditLog         // the file log.audit names; nil without one
	verify    *verifier         // verify.schedule; nil without one
	retention *retentionService // pull tracking, the GC write gate, the retention runner and its schedule
	counts    *countCache       // the whole ledger's counts, for the metrics and the web page
	jobs      jobs              // where the work that must run once runs

	stopSettler context.CancelFunc
	settlerDone chan struct{}
}

// LedgerPath is where the bolt ledger lives under the data directory.
func LedgerPath(data string) string { return ledger.BoltPath(data) }

// Start opens the ledger, starts the upstream and serves on cfg.Listen in
// the background. The listener is bound when Start returns.
func Start(ctx context.Context, cfg config.Config, log zerolog.Logger) (*Server, error) {
	return StartWith(ctx, cfg, log, Hooks{})
}

// Hooks change how Start builds taglock, for tests that inject faults. The
// zero Hooks change nothing.
type Hooks struct {
	// Upstream, when set, wraps the upstream (embedded or remote) that the
	// proxy uses.
	Upstream func(proxy.Upstream) proxy.Upstream
	// ReserveWait, when not zero, replaces the proxy's wait for a
	// conflicting request in flight (proxy.Options.ReserveWait).
	ReserveWait time.Duration
}

// StartWith is Start with hooks.
func StartWith(ctx context.Context, cfg config.Config, log zerolog.Logger, hooks Hooks) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, done: make(chan error, 1)}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	if err := cfg.SharedStorage(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Data, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	s.ledger, err = ledger.Open(ctx, cfg, ledger.Options{Log: log})
	switch {
	case errors.Is(err, storage.ErrLocked):
		return nil, fmt.Errorf("%w: is another taglock serving %s?", err, cfg.Data)
	case errors.Is(err, storage.ErrCorrupt):
		return nil, fmt.Errorf("%w; taglock will not serve without its ledger. "+
			"Run `taglock ledger check` to see what is wrong, then restore the ledger: "+
			"put a copy made by `taglock ledger backup` at %s, "+
			"or import a `taglock ledger export` into a new data directory", err, LedgerPath(cfg.Data))
	case err != nil:
		return nil, err
	}
	owner := newOwner()
	c, err := ledger.Join(ctx, cfg, s.ledger, owner, false, log)
	if err != nil {
		return nil, err
	}
	s.jobs = jobs{c}
	if c != nil && cfg.Upstream.URL == "" && cfg.Embedded.SecretFile == "" {
		log.Warn().Msg("embedded.secret_file is not set: each replica signs uploads with a secret of its own, " +
			"so an upload must go through one replica from start to end (a load balancer with session affinity)")
	}
	if s.up, s.registry, err = openUpstream(ctx, cfg, log); err != nil {
		return nil, err
	}
	if hooks.Upstream != nil {
		s.up = hooks.Upstream(s.up)
	}
	im, err := cfg.ImmutabilityPolicy()
	if err != nil {
		return nil, err
	}
	promo, err := cfg.PromotionPolicy()
	if err != nil {
		return nil, err
	}
	authn, access, err := clientAuth(cfg, log)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg)
	s.counts = newCountCache(s.ledger, log)
	s.counts.prime()
	counted := countedLedger{Ledger: s.ledger, counts: s.counts}
	metrics.WatchLedger(counted)
	if lc, ok := s.ledger.(proxy.LostEventsCounter); ok {
		metrics.WatchLostEvents(lc)
	}
	s.jobs.register(reg)
	if s.audit, s.auditFile, err = openAudit(cfg.Log.Audit, log); err != nil {
		return nil, err
	}
	s.retention = newRetentionService(cfg, s.ledger, s.jobs, log)
	s.proxy = proxy.New(proxy.Options{
		Pulls:            s.retention.pulls,
		Gate:             s.retention.gate,
		Upstream:         metrics.Upstream(s.up),
		Ledger:           meteredLedger{s.ledger, metrics},
		Immutability:     im,
		Promotion:        promo,
		PinOnRead:        cfg.Immutability.PinOnRead,
		Log:              log,
		Metrics:          metrics,
		Audit:            &s.audit,
		LookupTimeout:    cfg.Upstream.Timeout.Std(),
		SettleMargin:     cfg.Upstream.SettleMargin.Std(),
		Owner:            owner,
		SettledElsewhere: s.jobs.settledElsewhere(),
		ReserveWait:      hooks.ReserveWait,
		Auth:             authn,
		Access:           access,
		MaxUploads:       cfg.Limits.MaxConcurrentUploads,
		MaxManifestSize:  int64(cfg.Limits.MaxManifestSize),
		Cache:            cacheOptions(cfg),
	})
	if err := s.proxy.Reservations().Reconcile(ctx); err != nil {
		// Unsettled reservations stay and keep their tags held; pushes
		// of other content to them wait and are refused, never allowed.
		// The settler keeps trying.
		log.Warn().Err(err).Msg("start-up reconcile incomplete; pending reservations keep their tags held")
	}
	settleCtx, stopSettler := context.WithCancel(context.Background())
	s.settlerDone = make(chan struct{})
	s.stopSettler = stopSettler
	go func() {
		defer close(s.settlerDone)
		s.proxy.Reservations().Run(settleCtx, time.Second)
	}()

	s.verify = newVerifier(cfg.Verify.Schedule.Std(), s.proxy.Drift(), metrics, s.audit, log, s.jobs)
	if err := s.retention.start(cfg, s.ledger, s.proxy.Drift(), reg, log, &s.audit); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v2/", s.proxy)
	mux.Handle("/v2", s.proxy)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ledgerRoutes(mux, ledgerGate(authn, access, &s.audit),
		web.New(web.Options{Ledger: counted, Log: log, Viewer: viewer}),
		admin.New(admin.Options{Ledger: s.ledger, Log: log, Drift: s.verify.status, Viewer: viewer}))

	s.admin, err = listenAdmin(cfg.AdminSocket(), cfg.Admin.Group)
	if err != nil {
		return nil, err
	}
	sock := http.NewServeMux()
	sock.Handle(admin.Prefix, admin.New(admin.Options{Ledger: s.ledger, Tools: s.proxy.Drift(), Log: log, Audit: &s.audit,
		Retention: s.retention.runner, Drift: s.verify.status, Admin: true}))
	sock.Handle(web.Prefix, web.New(web.Options{Ledger: counted, Log: log}))

	s.http = &http.Server{
		// No ReadTimeout or WriteTimeout: they bound a whole request,
		// which would cut off a multi-GiB transfer on a slow link.
		// withDeadlines bounds only a stalled client instead.
		Handler:           withDeadlines(rawPaths(mux, s.proxy), cfg.Limits.BodyIdleTimeout.Std(), cfg.Limits.WriteIdleTimeout.Std()),
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout.Std(),
		IdleTimeout:       cfg.Limits.IdleTimeout.Std(),
		ErrorLog:          httpErrorLog(log),
	}
	if s.http.TLSConfig, err = serverTLS(cfg.TLS, log); err != nil {
		return nil, err
	}
	s.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	warnCleartext(cfg, s.ln.Addr(), log)
	mode := "embedded"
	if cfg.Upstream.URL != "" {
		mode = "upstream " + cfg.Upstream.URL
	}
	// Logged whatever the level: scripts read the bound address from it.
	log.Log().Str("level", "info").Str("addr", s.ln.Addr().String()).Str("mode", mode).Str("data", cfg.Data).
		Str("admin_socket", s.admin.path).Msg("listening")
	s.verify.start()
	go func() { s.done <- serve(s.http, s.ln) }()
	s.admin.start(sock, log)
	return s, nil
}

// embeddedOptions are the embedded registry's options from cfg.
func embeddedOptions(cfg config.Config, log zerolog.Logger) embedded.Options {
	return embedded.Options{Root: filepath.Join(cfg.Data, "registry"), Storage: cfg.Embedded.Storage,
		SecretFile: cfg.Embedded.SecretFile, Log: log}
}

// ledgerRoutes mounts the web page and the ledger's read API on the TCP
// listener's mux, behind gate. api must be built without admin.Options.Admin:
// its admin calls are 404, answered before gate asks for credentials.
func ledgerRoutes(mux *http.ServeMux, gate func(http.Handler) http.Handler, page, api http.Handler) {
	mux.Handle(web.Prefix, gate(page))
	mux.Handle(admin.Prefix+"admin/", api)
	mux.Handle(admin.Prefix, gate(api))
}

// httpErrorLog routes net/http's own messages to log: what a client's
// behaviour causes (a failed TLS handshake, a handler writing after a client
// hung up) at debug, anything else at warn. Nothing reaches the standard
// library's logger.
func httpErrorLog(log zerolog.Logger) *stdlog.Logger {
	return stdlog.New(httpLogWriter{log}, "", 0)
}

type httpLogWriter struct{ log zerolog.Logger }

func (w httpLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	ev := w.log.Warn()
	for _, noise := range []string{"http: TLS handshake error", "http: superfluous response.WriteHeader", "http2: "} {
		if strings.HasPrefix(msg, noise) {
			ev = w.log.Debug()
		}
	}
	ev.Str("component", "net/http").Msg(msg)
	return len(p), nil
}

// rawPaths sends every /v2 request to the proxy as it arrived. ServeMux
// would clean "..", "//" and percent-encoding and redirect, which hides from
// the proxy's parser exactly the spellings it must refuse.
func rawPaths(mux *http.ServeMux, p http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.URL.Path) >= 3 && r.URL.Path[:3] == "/v2" || r.URL.RawPath != "" {
			p.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if _, err := s.ledger.Binding(ctx, "taglock/readyz", "probe"); err != nil && !errors.Is(err, storage.ErrNotFound) {
		http.Error(w, "ledger: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/v2/", nil)
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		http.Error(w, "upstream: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		http.Error(w, fmt.Sprintf("upstream: /v2/ answered %d", resp.StatusCode), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// AdminSocket is the path of the Unix socket serving the admin API.
func (s *Server) AdminSocket() string { return s.admin.path }

// Ledger is the open ledger.
func (s *Server) Ledger() storage.Ledger { return s.ledger }

// Done is closed with the serve error when the listener stops.
func (s *Server) Done() <-chan error { return s.done }

// Shutdown stops accepting requests, drains those in flight (uploads
// included) until ctx ends, then closes the registry and the ledger.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	if aerr := s.admin.shutdown(ctx); err == nil {
		err = aerr
	}
	s.admin = nil
	s.closeAll()
	return err
}

func (s *Server) closeAll() {
	_ = s.admin.shutdown(context.Background())
	if s.stopSettler != nil {
		// Reservations still pending stay in the ledger and are settled
		// after the next start.
		s.stopSettler()
		<-s.settlerDone
	}
	s.verify.stop()
	_ = s.auditFile.Close()
	s.retention.stop()
	if s.counts != nil {
		s.counts.close()
	}
	s.jobs.close()
	if s.registry != nil {
		_ = s.registry.Shutdown()
	}
	if s.ledger != nil {
		_ = s.ledger.Close()
	}
}

// transport is the HTTP transport to a remote upstream.
func transport(u config.Upstream, log zerolog.Logger) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 64
	tr.DisableCompression = true
	tr.ReadBufferSize = 256 << 10
	tr.WriteBufferSize = 256 << 10
	tr.ResponseHeaderTimeout = 5 * time.Minute
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if u.TLS.CA != "" {
		pem, err := os.ReadFile(u.TLS.CA)
		if err != nil {
			return nil, fmt.Errorf("upstream.tls.ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream.tls.ca: no certificates in %s", u.TLS.CA)
		}
		tlsCfg.RootCAs = pool
	}
	if u.TLS.InsecureSkipVerify {
		log.Warn().Str("upstream", u.URL).Msg("UPSTREAM TLS VERIFICATION IS OFF (upstream.tls.insecure_skip_verify): anyone on the path can impersonate the registry")
		tlsCfg.InsecureSkipVerify = true
	}
	tr.TLSClientConfig = tlsCfg
	return tr, nil
}
