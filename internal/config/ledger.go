package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Ledger backends, the values of ledger.backend.
const (
	// BackendBolt keeps the ledger in one bbolt file, ledger.db in Data,
	// locked by one process: for a single taglock (a sidecar, one server).
	BackendBolt = "bolt"
	// BackendEtcd keeps the ledger in an etcd cluster, under Prefix, where
	// several taglock replicas share it.
	BackendEtcd = "etcd"
)

// Ledger is the `ledger:` section: where taglock keeps its ledger. Every
// key but backend is for the etcd backend, and giving one with backend bolt
// is an error, so a replica missing `backend: etcd` cannot quietly keep a
// ledger of its own.
type Ledger struct {
	// Backend is bolt (default: the file ledger.db in Data) or etcd.
	Backend string `yaml:"backend"`
	// Endpoints are the etcd cluster's client URLs, such as
	// https://etcd-0.etcd:2379. Required with backend etcd.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is the key prefix the ledger's keys live under; replicas of
	// one taglock share it, separate taglocks on one cluster each need
	// their own. It must end in /. Default /taglock/.
	Prefix string `yaml:"prefix"`
	// DialTimeout bounds connecting to the cluster. Default 5s.
	DialTimeout Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds every ledger call: without an answer within
	// it (etcd unreachable, or without quorum) the call fails and the
	// request that needed it gets 503. Default 5s.
	RequestTimeout Duration `yaml:"request_timeout"`
	// LeaseTTL is how long the lease each replica holds in etcd lives
	// without being renewed: its liveness key and its place in the
	// election of the replica that runs the scheduled jobs go with it. A
	// replica that dies is seen dead, its reservations are settled by
	// another and its jobs are taken over, within LeaseTTL. Whole
	// seconds, at least 2s. Default 10s.
	LeaseTTL Duration `yaml:"lease_ttl"`
	// TLS configures the client's TLS; needed with https endpoints that
	// the system roots do not verify, or that want a client certificate.
	TLS LedgerTLS `yaml:"tls"`
	// Username and Password (or PasswordFile) authenticate to etcd when
	// its authentication is on. Default "": none.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
}

// LedgerTLS is `ledger.tls:`.
type LedgerTLS struct {
	// CA is a PEM bundle that verifies the etcd servers; "" uses the
	// system roots.
	CA string `yaml:"ca"`
	// Cert and Key are the client certificate and key, given together.
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// defaultLedger is the `ledger:` section's defaults.
func defaultLedger() Ledger {
	return Ledger{
		Backend:        BackendBolt,
		Prefix:         "/taglock/",
		DialTimeout:    Duration(5 * time.Second),
		RequestTimeout: Duration(5 * time.Second),
		LeaseTTL:       Duration(10 * time.Second),
	}
}

// validate adds every problem of the `ledger:` section.
func (l Ledger) validate(add func(path, format string, args ...any)) {
	oneOf(add, "ledger.backend", l.Backend, BackendBolt, BackendEtcd)
	if l.Backend != BackendEtcd {
		def := defaultLedger()
		for _, k := range []struct {
			key string
			set bool
		}{
			{"endpoints", len(l.Endpoints) > 0},
			{"prefix", l.Prefix != def.Prefix},
			{"dial_timeout", l.DialTimeout != def.DialTimeout},
			{"request_timeout", l.RequestTimeout != def.RequestTimeout},
			{"lease_ttl", l.LeaseTTL != def.LeaseTTL},
			{"tls", l.TLS != LedgerTLS{}},
			{"username", l.Username != ""},
			{"password", l.Password != ""},
			{"password_file", l.PasswordFile != ""},
		} {
			if k.set {
				add("ledger."+k.key, "is for backend etcd, and ledger.backend is %q", l.Backend)
			}
		}
		return
	}
	if len(l.Endpoints) == 0 {
		add("ledger.endpoints", "backend etcd needs at least one endpoint, such as https://etcd-0:2379")
	}
	https := false
	for i, e := range l.Endpoints {
		p := fmt.Sprintf("ledger.endpoints[%d]", i)
		u, err := url.Parse(e)
		switch {
		case err != nil:
			add(p, "%v", err)
		case u.Scheme != "http" && u.Scheme != "https":
			add(p, "want http://host:port or https://host:port, got %q", e)
		case u.Host == "":
			add(p, "has no host")
		case u.Path != "" && u.Path != "/", u.RawQuery != "", u.User != nil:
			add(p, "must be scheme://host[:port] only, without path, query or credentials")
		case u.Scheme == "https":
			https = true
		}
	}
	if l.Prefix == "" || !strings.HasSuffix(l.Prefix, "/") || strings.ContainsRune(l.Prefix, 0) {
		add("ledger.prefix", "must be a key prefix ending in /, such as /taglock/, got %q", l.Prefix)
	}
	if l.DialTimeout <= 0 {
		add("ledger.dial_timeout", "must be positive")
	}
	if l.RequestTimeout <= 0 {
		add("ledger.request_timeout", "must be positive")
	}
	if l.LeaseTTL < Duration(2*time.Second) || l.LeaseTTL%Duration(time.Second) != 0 {
		add("ledger.lease_ttl", "must be whole seconds, at least 2s, got %s", l.LeaseTTL.Std())
	}
	if (l.TLS.Cert == "") != (l.TLS.Key == "") {
		add("ledger.tls", "cert and key must be given together")
	}
	if l.TLS != (LedgerTLS{}) && !https {
		add("ledger.tls", "is used only with https endpoints")
	}
	if l.Password != "" && l.PasswordFile != "" {
		add("ledger.password", "give password or password_file, not both")
	}
	if (l.Password != "" || l.PasswordFile != "") && l.Username == "" {
		add("ledger.username", "required with a password")
	}
	if l.Username != "" && l.Password == "" && l.PasswordFile == "" {
		add("ledger.username", "needs password or password_file")
	}
}
