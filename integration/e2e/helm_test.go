//go:build e2e

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/taglock/taglock/integration/internal/proc"
)

// chartDir is the Helm chart, from this package's directory.
const chartDir = "../../configs/helm/taglock"

// object is one rendered Kubernetes object, as YAML decodes it.
type object map[string]any

// get walks keys and list indexes ("containers", 0, "name") and returns
// what is there, or nil.
func (o object) get(path ...any) any {
	var cur any = map[string]any(o)
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				return nil
			}
			cur = m[k]
		case int:
			l, ok := cur.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			cur = l[k]
		}
	}
	return cur
}

// find returns the element of the list at path whose "name" is name.
func (o object) find(name string, path ...any) object {
	l, _ := o.get(path...).([]any)
	for _, e := range l {
		if m, ok := e.(map[string]any); ok && m["name"] == name {
			return object(m)
		}
	}
	return nil
}

// renderChart runs helm lint --strict and helm template with the values
// files given (none: the chart's defaults) and returns the objects by
// kind.
func renderChart(t *testing.T, helm string, values ...string) map[string][]object {
	t.Helper()
	args := []string{chartDir}
	for _, v := range values {
		args = append(args, "-f", filepath.Join(chartDir, v))
	}
	mustRun(t, command{bin: helm, args: append([]string{"lint", "--strict"}, args...)})
	out := mustRun(t, command{bin: helm, args: append([]string{"template", "t"}, args...)})
	objs := map[string][]object{}
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		var o map[string]any
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("helm template %v: rendered YAML does not parse: %v", values, err)
		}
		if o != nil {
			kind, _ := o["kind"].(string)
			objs[kind] = append(objs[kind], object(o))
		}
	}
	return objs
}

// one returns the only object of kind, failing the test otherwise.
func one(t *testing.T, objs map[string][]object, kind string) object {
	t.Helper()
	if len(objs[kind]) != 1 {
		t.Fatalf("%d objects of kind %s, want 1", len(objs[kind]), kind)
	}
	return objs[kind][0]
}

// validateRendered checks the taglock.yaml of the rendered ConfigMap with
// `taglock config validate`, and returns it parsed.
func validateRendered(t *testing.T, objs map[string][]object) object {
	t.Helper()
	text, _ := one(t, objs, "ConfigMap").get("data", "taglock.yaml").(string)
	f := filepath.Join(t.TempDir(), "taglock.yaml")
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, command{bin: proc.Tool(t, "TAGLOCK_BIN"), args: []string{"config", "validate", "-c", f}})
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatal(err)
	}
	return object(cfg)
}

// checkPod checks what both shapes need of the taglock container: the
// probes, the config, and the admin socket on a volume of the pod's own.
func checkPod(t *testing.T, dep object, cfg object) object {
	t.Helper()
	pod := object(dep.get("spec", "template", "spec").(map[string]any))
	tl := pod.find("taglock", "containers")
	if tl == nil {
		t.Fatal("no taglock container")
	}
	if p := tl.get("readinessProbe", "httpGet", "path"); p != "/readyz" {
		t.Errorf("readiness probe path %v, want /readyz", p)
	}
	if p := tl.get("livenessProbe", "httpGet", "path"); p != "/healthz" {
		t.Errorf("liveness probe path %v, want /healthz", p)
	}
	sock, _ := cfg.get("admin", "socket").(string)
	admin := tl.find("admin", "volumeMounts")
	if admin == nil || !strings.HasPrefix(sock, fmt.Sprint(admin["mountPath"])+"/") {
		t.Errorf("admin socket %q is not on the admin volume mount %v", sock, admin)
	}
	if v := pod.find("admin", "volumes"); v == nil || v.get("emptyDir") == nil {
		t.Errorf("the admin socket's volume is %v, want an emptyDir inside the pod", v)
	}
	if c := tl.find("config", "volumeMounts"); c == nil || c["mountPath"] != "/etc/taglock/taglock.yaml" {
		t.Errorf("config mount %v", c)
	}
	return pod
}

// TestHelmChart renders the chart with each values file and checks that
// the objects carry what each shape needs: the sidecar is one replica next
// to a registry on the pod's loopback, with its bolt ledger on a volume of
// its own and a Recreate strategy; the replicated shape is three replicas
// on etcd over TLS, the client certificate from a Secret, behind a
// PodDisruptionBudget. Both have their probes, an admin socket inside the
// pod only, and a taglock.yaml that `taglock config validate` accepts. A
// bolt ledger with more than one replica is refused.
func TestHelmChart(t *testing.T) {
	t.Parallel()
	helm := proc.Tool(t, "HELM_BIN")

	for name, values := range map[string][]string{"defaults": nil, "sidecar": {"values-sidecar.yaml"}} {
		t.Run(name, func(t *testing.T) {
			objs := renderChart(t, helm, values...)
			cfg := validateRendered(t, objs)
			dep := one(t, objs, "Deployment")
			if r := dep.get("spec", "replicas"); r != 1 {
				t.Errorf("replicas %v, want 1", r)
			}
			if s := dep.get("spec", "strategy", "type"); s != "Recreate" {
				t.Errorf("strategy %v, want Recreate (the bolt file is locked by one process)", s)
			}
			pod := checkPod(t, dep, cfg)
			if b := cfg.get("ledger", "backend"); b != nil && b != "bolt" {
				t.Errorf("ledger backend %v, want bolt", b)
			}
			data := pod.find("data", "volumes")
			claim, _ := data.get("persistentVolumeClaim", "claimName").(string)
			found := false
			for _, pvc := range objs["PersistentVolumeClaim"] {
				found = found || pvc.get("metadata", "name") == claim
			}
			if claim == "" || !found {
				t.Errorf("the data volume %v is not a claim the chart creates", data)
			}
			if m := pod.find("taglock", "containers").find("data", "volumeMounts"); m == nil || m["mountPath"] != cfg.get("data") {
				t.Errorf("data mount %v, config data %v", m, cfg.get("data"))
			}
			reg := pod.find("registry", "containers")
			if reg == nil {
				t.Fatal("no registry container")
			}
			addr := reg.find("REGISTRY_HTTP_ADDR", "env")
			if addr == nil || !strings.HasPrefix(fmt.Sprint(addr["value"]), "127.0.0.1:") ||
				cfg.get("upstream", "url") != "http://"+fmt.Sprint(addr["value"]) {
				t.Errorf("registry listens on %v, taglock's upstream is %v; want the same loopback address", addr, cfg.get("upstream", "url"))
			}
			if len(objs["PodDisruptionBudget"]) != 0 {
				t.Error("the sidecar shape has a PodDisruptionBudget")
			}
		})
	}

	t.Run("replicated", func(t *testing.T) {
		objs := renderChart(t, helm, "values-replicated.yaml")
		cfg := validateRendered(t, objs)
		dep := one(t, objs, "Deployment")
		if r := dep.get("spec", "replicas"); r != 3 {
			t.Errorf("replicas %v, want 3", r)
		}
		if s := dep.get("spec", "strategy", "type"); s == "Recreate" {
			t.Error("the replicated shape recreates: every replica would stop at once on an update")
		}
		pod := checkPod(t, dep, cfg)
		if pod.find("registry", "containers") != nil {
			t.Error("the replicated shape runs a sidecar registry")
		}
		if b := cfg.get("ledger", "backend"); b != "etcd" {
			t.Errorf("ledger backend %v, want etcd", b)
		}
		eps, _ := cfg.get("ledger", "endpoints").([]any)
		if len(eps) != 3 || !strings.HasPrefix(fmt.Sprint(eps[0]), "https://") {
			t.Errorf("etcd endpoints %v, want three https ones", eps)
		}
		mount := pod.find("taglock", "containers").find("etcd-tls", "volumeMounts")
		secret := pod.find("etcd-tls", "volumes")
		if mount == nil || secret == nil || secret.get("secret", "secretName") != "taglock-etcd-client" {
			t.Fatalf("etcd TLS mount %v from volume %v, want the Secret taglock-etcd-client", mount, secret)
		}
		for _, key := range []string{"ca", "cert", "key"} {
			p, _ := cfg.get("ledger", "tls", key).(string)
			if !strings.HasPrefix(p, fmt.Sprint(mount["mountPath"])+"/") {
				t.Errorf("ledger.tls.%s %q is not under the Secret's mount %v", key, p, mount["mountPath"])
			}
		}
		pdb := one(t, objs, "PodDisruptionBudget")
		if pdb.get("spec", "maxUnavailable") != 1 {
			t.Errorf("PDB maxUnavailable %v, want 1", pdb.get("spec", "maxUnavailable"))
		}
		sel, _ := pdb.get("spec", "selector", "matchLabels").(map[string]any)
		labels, _ := dep.get("spec", "template", "metadata", "labels").(map[string]any)
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("the PDB selects %s=%v, the pods have %v", k, v, labels[k])
			}
		}
		if len(sel) == 0 {
			t.Error("the PDB selects nothing")
		}
		if len(objs["PersistentVolumeClaim"]) != 0 {
			t.Error("the replicated shape claims volumes: its ledger is in etcd")
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, set := range []string{"replicaCount=2", "pdb.enabled=true"} {
			out, err := run(t, command{bin: helm, args: []string{"template", "t", chartDir, "--set", set}})
			if err == nil || !bytes.Contains([]byte(out), []byte("bolt")) {
				t.Errorf("helm template --set %s with the bolt ledger: %v\n%s; want a refusal naming bolt", set, err, out)
			}
		}
	})
}
