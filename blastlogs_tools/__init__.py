"""Deploy-time tools, run by people and pipelines, never by the sidecar: `inject` (adds the sidecar
and `logwrap` to Kubernetes YAML) and `demo` (the whole data path on one machine).

Users reach them as `blast-log-shipper inject` and `blast-log-shipper demo`; they need the
`tools` extra (`pip install 'blast-logs[tools]'`), which the shipper image does not carry.
"""
