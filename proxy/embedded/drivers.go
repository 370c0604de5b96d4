package embedded

// The storage drivers an embedded registry may use besides the filesystem:
// object stores that several taglock replicas can share (Options.Storage).
//
// Distribution's gcs driver is left out on purpose: its client libraries
// (Google Cloud, gRPC, OpenTelemetry) add 16 MB to the binary and 13 MiB
// to every taglock's resident memory, used or not, which alone would break
// the 96 MiB budget of docs/benchmarks.md. Google Cloud Storage speaks the
// S3 protocol (HMAC keys, regionendpoint https://storage.googleapis.com),
// so the s3 driver serves it.
import (
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// Drivers are the storage driver names Options.Storage accepts, as
// Distribution's configuration spells them.
var Drivers = []string{"filesystem", "s3aws", "s3", "azure"}
