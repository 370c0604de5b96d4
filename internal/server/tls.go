package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
)

// certReloader serves the certificate in a cert/key file pair and reads the
// pair again when either file changes, so a renewed certificate is picked up
// without a restart. A pair that does not load (say, half-written) leaves
// the previous certificate in service.
type certReloader struct {
	cert, key string
	log       zerolog.Logger

	mu      sync.Mutex
	stamp   string
	current *tls.Certificate
}

func newCertReloader(cert, key string, log zerolog.Logger) (*certReloader, error) {
	c := &certReloader{cert: cert, key: key, log: log}
	if _, err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

// fileStamp identifies a file's version by size and modification time.
func fileStamp(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%d@%d", fi.Size(), fi.ModTime().UnixNano()), nil
}

// load returns the current certificate, reading the files if they changed.
func (c *certReloader) load() (*tls.Certificate, error) {
	a, errA := fileStamp(c.cert)
	b, errB := fileStamp(c.key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if errA != nil || errB != nil {
		if c.current != nil {
			return c.current, nil
		}
		return nil, fmt.Errorf("tls: %w", firstErr(errA, errB))
	}
	stamp := a + "|" + b
	if c.current != nil && stamp == c.stamp {
		return c.current, nil
	}
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		if c.current != nil {
			c.log.Warn().Err(err).Str("cert", c.cert).Msg("tls certificate changed but does not load; still serving the previous one")
			return c.current, nil
		}
		return nil, fmt.Errorf("tls: %w", err)
	}
	if c.current != nil {
		c.log.Info().Str("cert", c.cert).Msg("tls certificate reloaded")
	}
	c.current, c.stamp = &pair, stamp
	return c.current, nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// serverTLS is the TLS configuration for the listener, or nil when the tls
// section is empty: TLS 1.2 at least, HTTP/2 offered, the certificate
// reloaded on change, and client certificates verified against client_ca
// when one is given.
func serverTLS(t config.TLS, log zerolog.Logger) (*tls.Config, error) {
	if t.Cert == "" {
		return nil, nil
	}
	r, err := newCertReloader(t.Cert, t.Key, log)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.load() },
	}
	if t.ClientCA != "" {
		pem, err := os.ReadFile(t.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_ca: no certificates in %s", t.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// serve serves srv on ln, over TLS when srv has a TLS configuration.
func serve(srv *http.Server, ln net.Listener) error {
	if srv.TLSConfig != nil {
		return srv.ServeTLS(ln, "", "")
	}
	return srv.Serve(ln)
}

// warnCleartext warns when clients must send credentials to a non-loopback
// address without TLS.
func warnCleartext(cfg config.Config, addr net.Addr, log zerolog.Logger) {
	if cfg.Auth.Mode == "" || cfg.Auth.Mode == "none" || cfg.TLS.Cert != "" {
		return
	}
	if ta, ok := addr.(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		return
	}
	log.Warn().Str("addr", addr.String()).Str("auth", cfg.Auth.Mode).
		Msg("authentication is on but TLS is off on a non-loopback address: credentials cross the network in the clear; set tls.cert and tls.key")
}
