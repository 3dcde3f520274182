package monitoring

// The API types controller-gen reads.
import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
