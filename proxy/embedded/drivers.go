package embedded

// The storage drivers an embedded registry may use besides the filesystem:
// object stores that several taglock replicas can share (Options.Storage).
import (
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// Drivers are the storage driver names Options.Storage accepts, as
// Distribution's configuration spells them.
var Drivers = []string{"filesystem", "s3aws", "s3", "gcs", "azure"}
