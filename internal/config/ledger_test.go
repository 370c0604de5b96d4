package config

import (
	"strings"
	"testing"
	"time"
)

// TestLedgerSection ensures the ledger defaults to the bolt file, that an
// etcd ledger loads with its connection settings, and that every problem
// of the section is reported with its line: a missing or malformed
// endpoint, a prefix that is not one, half a client certificate, and etcd
// settings given to the bolt backend.
func TestLedgerSection(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("t.yaml", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Ledger.Backend != BackendBolt {
		t.Errorf("default backend %q, want bolt", cfg.Ledger.Backend)
	}
	cfg, err = Parse("t.yaml", strings.NewReader(`ledger:
  backend: etcd
  endpoints: [https://etcd-0:2379, https://etcd-1:2379]
  prefix: /prod/taglock/
  request_timeout: 2s
  lease_ttl: 4s
  tls: {ca: /etc/etcd/ca.pem, cert: c.pem, key: c.key}
  username: taglock
  password_file: /run/secrets/etcd
upstream:
  url: https://registry.example.com
`))
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Ledger
	if l.Backend != BackendEtcd || len(l.Endpoints) != 2 || l.Prefix != "/prod/taglock/" || l.RequestTimeout.Std() != 2*time.Second || l.LeaseTTL.Std() != 4*time.Second ||
		l.DialTimeout.Std() != 5*time.Second || l.TLS.CA != "/etc/etcd/ca.pem" || l.Username != "taglock" || l.PasswordFile != "/run/secrets/etcd" {
		t.Errorf("ledger = %+v", l)
	}

	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown backend", "ledger:\n  backend: consul\n", []string{"t.yaml:2: ledger.backend"}},
		{"etcd without endpoints", "ledger:\n  backend: etcd\n", []string{"ledger.endpoints: backend etcd needs"}},
		{"every endpoint problem", "ledger:\n  backend: etcd\n  endpoints:\n    - etcd-0:2379\n    - http://\n    - http://e:1/v3\n",
			[]string{"t.yaml:4: ledger.endpoints[0]", "t.yaml:5: ledger.endpoints[1]: has no host", "t.yaml:6: ledger.endpoints[2]: must be scheme"}},
		{"prefix", "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n  prefix: /taglock\n", []string{"t.yaml:4: ledger.prefix"}},
		{"half a certificate, and tls over http", "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n  tls:\n    cert: c.pem\n",
			[]string{"ledger.tls: cert and key", "ledger.tls: is used only with https"}},
		{"password without a user", "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n  password: x\n", []string{"ledger.username: required"}},
		{"both passwords", "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n  username: u\n  password: x\n  password_file: f\n", []string{"ledger.password: give password or"}},
		{"zero timeout", "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n  request_timeout: 0\n", []string{"t.yaml:4: ledger.request_timeout: must be positive"}},
		{"lease ttl", "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n  lease_ttl: 1500ms\n", []string{"t.yaml:4: ledger.lease_ttl: must be whole seconds, at least 2s"}},
		{"etcd settings with bolt", "ledger:\n  endpoints: [http://e:2379]\n  username: u\n",
			[]string{"t.yaml:2: ledger.endpoints: is for backend etcd", "t.yaml:3: ledger.username: is for backend etcd"}},
		{"unknown key", "ledger:\n  backend: etcd\n  endpoint: http://e:2379\n", []string{"t.yaml:3: unknown key \"endpoint\""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", strings.NewReader(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
