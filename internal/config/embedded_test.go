package config

import (
	"strings"
	"testing"
)

func TestEmbeddedStorageWithEtcd(t *testing.T) {
	// A replica on the etcd ledger with the embedded registry on local
	// filesystem storage is refused (by SharedStorage, which serve checks
	// at start), saying what to do instead, unless
	// the tests-only override is set; a shared driver, or an upstream,
	// is accepted; the section is refused with an upstream.
	t.Parallel()
	const etcd = "ledger:\n  backend: etcd\n  endpoints: [http://e:2379]\n"
	tests := []struct {
		name, yaml string
		want       string // "" means accepted
	}{
		{"etcd and local storage", etcd, "embedded.storage: the embedded registry keeps blobs on this machine's disk"},
		{"etcd and explicit filesystem storage", etcd + "embedded:\n  storage:\n    filesystem: {rootdirectory: /d}\n", "unsafe_local_storage_for_tests: true overrides this"},
		{"the tests-only override", etcd + "embedded:\n  unsafe_local_storage_for_tests: true\n", ""},
		{"etcd and s3", etcd + "embedded:\n  storage:\n    s3: {region: eu-west-1, bucket: blobs}\n  secret_file: /run/secrets/http\n", ""},
		{"etcd and an upstream", etcd + "upstream:\n  url: http://registry:5000\n", ""},
		{"bolt and local storage", "data: /d\n", ""},
		{"unknown driver", "embedded:\n  storage:\n    inmemory: {}\n", `driver "inmemory" is not one of`},
		{"two drivers", "embedded:\n  storage:\n    s3: {}\n    gcs: {}\n", "names 2 drivers, want one"},
		{"with an upstream", "upstream:\n  url: http://registry:5000\nembedded:\n  secret_file: /s\n", "embedded: is for the embedded registry"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("t.yaml", strings.NewReader(tc.yaml))
			if err == nil {
				err = cfg.SharedStorage()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			case tc.want == "" && tc.name == "etcd and s3" && (cfg.Embedded.StorageDriver() != "s3" || cfg.Embedded.Storage["s3"]["bucket"] != "blobs"):
				t.Errorf("embedded = %+v", cfg.Embedded)
			}
		})
	}
}
