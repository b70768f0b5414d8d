package mailmsg

// NormalizeCRLF returns b with every line break in canonical form: each bare
// CR, each bare LF and each CR LF pair becomes CR LF, so "\r\r\n" yields two
// line breaks. Nothing else changes. The result never holds a CR that is not
// followed by LF, nor an LF that is not preceded by CR, which is what stops
// SMTP smuggling through "<LF>.<CR><LF>"-style end-of-data sequences
// (SEC Consult, 2023). The input is not modified; the result is always a new
// slice.
func NormalizeCRLF(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/64+2)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '\r':
			out = append(out, '\r', '\n')
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
		case '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out
}

// IsCanonicalCRLF reports whether every CR in b is followed by LF and every
// LF preceded by CR, that is, whether NormalizeCRLF would return b unchanged.
// It lets hot paths skip the copy for bodies that are already canonical.
func IsCanonicalCRLF(b []byte) bool {
	for i, c := range b {
		switch c {
		case '\r':
			if i+1 >= len(b) || b[i+1] != '\n' {
				return false
			}
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return false
			}
		}
	}
	return true
}
