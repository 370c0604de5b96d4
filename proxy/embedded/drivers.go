package embedded

// The storage drivers an embedded registry may use besides the filesystem:
// object stores that several taglock replicas can share (Options.Storage).
import (
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// Drivers are the storage driver names Options.Storage accepts, as
// Distribution's configuration spells them: the ones every build has, and
// gcs in a build with the gcs tag (drivers_gcs.go).
var Drivers = append([]string{"filesystem", "s3aws", "s3", "azure"}, optionalDrivers...)

// OptionalDrivers are the drivers only a build with their tag has, each
// with that tag. Distribution's gcs driver is one: its client libraries
// (Google Cloud, gRPC, OpenTelemetry) add 16 MB to the binary and 13 MiB to
// every taglock's resident memory, used or not, which alone would break the
// 96 MiB budget of docs/benchmarks.md for everyone who does not use it.
var OptionalDrivers = map[string]string{"gcs": "gcs"}
