package config

import (
	"fmt"
	"sort"
	"strings"
)

// TLS is on unless a config says `tls = "off"`; a [tls] table tunes it.
// Both forms are decoded here, as BurntSushi/toml cannot decode a key
// that is a string in one file and a table in another.

// ServerTLS is tunneld's TLS. With neither file set, tunneld uses an
// automatic certificate kept in state_dir.
type ServerTLS struct {
	// Off serves sessions in cleartext (`tls = "off"`), warned at every start.
	Off      bool
	CertFile string
	KeyFile  string
	// ClientCAFile makes a client certificate signed by one of its CAs
	// mandatory (mutual TLS); the certificate's common name is the
	// client's name.
	ClientCAFile string
}

// Enabled reports whether sessions use TLS.
func (t ServerTLS) Enabled() bool { return !t.Off }

// Auto reports whether tunneld makes its own certificate.
func (t ServerTLS) Auto() bool { return !t.Off && t.CertFile == "" && t.KeyFile == "" }

// UnmarshalTOML implements toml.Unmarshaler.
func (t *ServerTLS) UnmarshalTOML(v any) error {
	off, m, err := tlsValue(v)
	if err != nil || off {
		t.Off = off
		return err
	}
	return decodeTable("tls", m, map[string]any{
		"cert_file":      &t.CertFile,
		"key_file":       &t.KeyFile,
		"client_ca_file": &t.ClientCAFile,
	})
}

// ClientTLS is how tunnelc trusts the server. With nothing set, the
// server's certificate must chain to the system roots; an automatic
// certificate is trusted by pinning its fingerprint.
type ClientTLS struct {
	// Off speaks cleartext (`tls = "off"`), warned at every start.
	Off         bool
	CAFile      string
	ServerName  string
	Fingerprint string
	// InsecureSkipVerify trusts any certificate: an explicit, warned opt-out.
	InsecureSkipVerify bool
	// CertFile and KeyFile are presented to a server that asks for a
	// client certificate.
	CertFile string
	KeyFile  string
}

// Enabled reports whether the session uses TLS.
func (t ClientTLS) Enabled() bool { return !t.Off }

// UnmarshalTOML implements toml.Unmarshaler.
func (t *ClientTLS) UnmarshalTOML(v any) error {
	off, m, err := tlsValue(v)
	if err != nil || off {
		t.Off = off
		return err
	}
	// enabled = true|false is the older spelling of the default and of
	// tls = "off".
	enabled := true
	if err := decodeTable("tls", m, map[string]any{
		"enabled":              &enabled,
		"ca_file":              &t.CAFile,
		"server_name":          &t.ServerName,
		"fingerprint":          &t.Fingerprint,
		"insecure_skip_verify": &t.InsecureSkipVerify,
		"cert_file":            &t.CertFile,
		"key_file":             &t.KeyFile,
	}); err != nil {
		return err
	}
	t.Off = !enabled
	return nil
}

func tlsValue(v any) (off bool, m map[string]any, err error) {
	switch v := v.(type) {
	case string:
		if v == "off" {
			return true, nil, nil
		}
		return false, nil, fmt.Errorf("tls = %q: the only word it takes is \"off\" (leave it out for TLS, or use a [tls] table)", v)
	case map[string]any:
		return false, v, nil
	}
	return false, nil, fmt.Errorf("tls: want \"off\" or a [tls] table, not %T", v)
}

// decodeTable sets fields (pointers to string or bool) from m; an unknown
// key or a wrong type is an error naming it.
func decodeTable(table string, m map[string]any, fields map[string]any) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var bad []string
	for _, k := range keys {
		switch p := fields[k].(type) {
		case *string:
			s, ok := m[k].(string)
			if !ok {
				return fmt.Errorf("%s.%s: want a string, not %T", table, k, m[k])
			}
			*p = s
		case *bool:
			b, ok := m[k].(bool)
			if !ok {
				return fmt.Errorf("%s.%s: want true or false, not %T", table, k, m[k])
			}
			*p = b
		default:
			bad = append(bad, table+"."+k)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("unknown key %s (check its spelling and the table it is in)", strings.Join(bad, ", "))
	}
	return nil
}

// Describe says in a few words how sessions are protected, for `check`.
func (t ServerTLS) Describe(stateDir string) string {
	var s string
	switch {
	case t.Off:
		return "off: sessions in cleartext"
	case t.Auto() && stateDir == "":
		s = "TLS 1.3, automatic certificate made at every start (no state_dir)"
	case t.Auto():
		s = "TLS 1.3, automatic certificate kept in " + stateDir
	default:
		s = "TLS 1.3, certificate " + t.CertFile
	}
	if t.ClientCAFile != "" {
		s += ", client certificates required (CA " + t.ClientCAFile + ")"
	}
	return s
}

// Describe says in a few words how the server is trusted, for `check`.
func (t ClientTLS) Describe() string {
	var s string
	switch {
	case t.Off:
		return "off: session in cleartext"
	case t.InsecureSkipVerify:
		s = "TLS 1.3, server NOT verified (insecure_skip_verify)"
	case t.Fingerprint != "":
		s = "TLS 1.3, server pinned to " + t.Fingerprint
	case t.CAFile != "":
		s = "TLS 1.3, server verified against " + t.CAFile
	default:
		s = "TLS 1.3, server verified against the system's CAs"
	}
	if t.CertFile != "" {
		s += ", client certificate " + t.CertFile
	}
	return s
}
