package config

import (
	"errors"
	"slices"
	"strings"
)

// StorageDrivers are the storage drivers embedded.storage may name, as
// Distribution's configuration spells them. Only filesystem keeps blobs on
// the local disk; the others are object stores several replicas share.
var StorageDrivers = []string{"filesystem", "s3", "s3aws", "gcs", "azure"}

// Embedded is the `embedded:` section: the Distribution registry taglock
// runs in-process when upstream.url is empty. Giving any of it with
// upstream.url set is an error.
type Embedded struct {
	// Storage is Distribution's storage driver section for the embedded
	// registry, passed as it is to Distribution's configuration: one of
	// StorageDrivers and its parameters (see Distribution's storage
	// driver documentation), such as
	//
	//	storage:
	//	  s3: {region: eu-west-1, bucket: registry-blobs}
	//
	// taglock sets delete, redirect and maintenance itself. Default:
	// filesystem under Data/registry/data.
	Storage map[string]map[string]any `yaml:"storage"`
	// SecretFile holds the secret (32 characters or more) that signs
	// upload state. Replicas behind one load balancer must share it, so
	// that an upload started through one continues through another.
	// Default "": Data/registry/http.secret, generated when missing.
	SecretFile string `yaml:"secret_file"`
	// UnsafeLocalStorageForTests lets a replica on the etcd ledger keep
	// its blobs on local filesystem storage, which other replicas cannot
	// see: pushes through one replica then lack their blobs on another.
	// For tests that run several replicas on one machine only. Default
	// false: such a configuration is refused.
	UnsafeLocalStorageForTests bool `yaml:"unsafe_local_storage_for_tests"`
}

// StorageDriver is the driver embedded.storage names: filesystem when it
// names none.
func (e Embedded) StorageDriver() string {
	for name := range e.Storage {
		return name
	}
	return "filesystem"
}

// validate adds every problem of the `embedded:` section, given the rest
// of the configuration.
func (e Embedded) validate(c Config, add func(path, format string, args ...any)) {
	if c.Upstream.URL != "" {
		if len(e.Storage) > 0 || e.SecretFile != "" || e.UnsafeLocalStorageForTests {
			add("embedded", "is for the embedded registry, and upstream.url is set")
		}
		return
	}
	if len(e.Storage) > 1 {
		add("embedded.storage", "names %d drivers, want one", len(e.Storage))
	}
	for name := range e.Storage {
		if !slices.Contains(StorageDrivers, name) {
			add("embedded.storage", "driver %q is not one of %s", name, strings.Join(StorageDrivers, ", "))
		}
	}
}

// SharedStorage returns an error saying what to do when the configuration
// runs a replica on the etcd ledger with the embedded registry on local
// filesystem storage, which the other replicas cannot see, unless
// embedded.unsafe_local_storage_for_tests is set. serve refuses to start
// on it. It is not part of Validate, since serve's --upstream flag changes
// upstream.url after the file is loaded.
func (c Config) SharedStorage() error {
	if c.Ledger.Backend != BackendEtcd || c.Upstream.URL != "" || c.Embedded.StorageDriver() != "filesystem" || c.Embedded.UnsafeLocalStorageForTests {
		return nil
	}
	return errors.New("embedded.storage: the embedded registry keeps blobs on this machine's disk (filesystem storage), " +
		"which other replicas sharing the etcd ledger cannot see, so an image pushed through one replica would lack its blobs on another. " +
		"Give embedded.storage a shared driver (s3, gcs or azure) or put the registry elsewhere (upstream.url). " +
		"For tests on one machine only, embedded.unsafe_local_storage_for_tests: true overrides this")
}
