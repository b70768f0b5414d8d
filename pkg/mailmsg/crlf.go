package mailmsg

import "bytes"

// NormalizeCRLF returns b with every line break in canonical form: each bare
// CR, each bare LF and each CR LF pair becomes CR LF, so "\r\r\n" yields two
// line breaks. Nothing else changes. The result never holds a CR that is not
// followed by LF, nor an LF that is not preceded by CR, which is what stops
// SMTP smuggling through "<LF>.<CR><LF>"-style end-of-data sequences
// (SEC Consult, 2023). The input is not modified; the result is always a new
// slice.
func NormalizeCRLF(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/64+2)
	// cr and lf cache the next CR and LF positions in b, found with the
	// vectorised IndexByte (-1: none left, -2: search again), so the copy
	// proceeds line by line instead of byte by byte and stays linear.
	cr, lf := -2, -2
	for len(b) > 0 {
		if cr == -2 {
			cr = bytes.IndexByte(b, '\r')
		}
		if lf == -2 {
			lf = bytes.IndexByte(b, '\n')
		}
		var k int
		switch {
		case cr < 0 && lf < 0:
			return append(out, b...)
		case cr >= 0 && (lf < 0 || cr < lf):
			k = cr
		default:
			k = lf
		}
		out = append(out, b[:k]...)
		out = append(out, '\r', '\n')
		adv := k + 1
		if b[k] == '\r' && k+1 < len(b) && b[k+1] == '\n' {
			adv = k + 2
		}
		b = b[adv:]
		if cr >= 0 {
			if cr < adv {
				cr = -2
			} else {
				cr -= adv
			}
		}
		if lf >= 0 {
			if lf < adv {
				lf = -2
			} else {
				lf -= adv
			}
		}
	}
	return out
}

// IsCanonicalCRLF reports whether every CR in b is followed by LF and every
// LF preceded by CR, that is, whether NormalizeCRLF would return b unchanged.
// It lets hot paths skip the copy for bodies that are already canonical.
func IsCanonicalCRLF(b []byte) bool {
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			break
		}
		if off+i == 0 || b[off+i-1] != '\r' {
			return false
		}
		off += i + 1
	}
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '\r')
		if i < 0 {
			return true
		}
		if off+i+1 >= len(b) || b[off+i+1] != '\n' {
			return false
		}
		off += i + 1
	}
}
