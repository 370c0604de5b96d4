package config

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestAuthExampleConfigs ensures the access-control examples in configs/
// stay valid, and the Kubernetes sidecar manifest's embedded taglock.yaml
// does too.
func TestAuthExampleConfigs(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"../../configs/auth-htpasswd.yaml", "../../configs/harbor-sidecar.yaml", "../../configs/ecr.yaml"} {
		cfg, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if cfg.Auth.Mode == "none" || len(cfg.Access) == 0 || cfg.TLS.Cert == "" {
			t.Errorf("%s: want authentication, access rules and TLS on, got %+v", f, cfg.Auth)
		}
	}
	cfg := k8sEmbeddedConfig(t, "../../configs/k8s-sidecar.yaml")
	if cfg.Auth.Mode != "htpasswd" || cfg.Upstream.URL != "http://127.0.0.1:5000" {
		t.Errorf("k8s sidecar config: %+v", cfg)
	}
}

// k8sEmbeddedConfig parses the taglock.yaml inside the manifest's ConfigMap.
func k8sEmbeddedConfig(t *testing.T, path string) Config {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
		}
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("%s: no ConfigMap with taglock.yaml: %v", path, err)
		}
		if doc.Kind == "ConfigMap" && doc.Data["taglock.yaml"] != "" {
			cfg, err := Parse(path+"#taglock.yaml", strings.NewReader(doc.Data["taglock.yaml"]))
			if err != nil {
				t.Fatal(err)
			}
			return cfg
		}
	}
}
