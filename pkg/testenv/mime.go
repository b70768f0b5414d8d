package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-message"
)

// maxLeafDepth bounds MIMELeaves' recursion; real mail nests 3 to 5 deep.
const maxLeafDepth = 30

// MIMELeaves returns what a reader sees of a message: each leaf part as
// "media/type: decoded content", embedded message/rfc822 parts opened, in
// order. Two messages with equal leaves read the same however their parts
// are transfer-encoded, which is how tests check a re-encoded message
// against the one submitted.
func MIMELeaves(msg []byte) ([]string, error) {
	return mimeLeaves(msg, 0)
}

func mimeLeaves(msg []byte, depth int) ([]string, error) {
	if depth > maxLeafDepth {
		return nil, errors.New("testenv: MIME tree too deep")
	}
	e, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		return nil, err
	}
	var out []string
	var walk func(e *message.Entity, depth int) error
	walk = func(e *message.Entity, depth int) error {
		if depth > maxLeafDepth {
			return errors.New("testenv: MIME tree too deep")
		}
		if mr := e.MultipartReader(); mr != nil {
			for {
				p, err := mr.NextPart()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil && !message.IsUnknownCharset(err) {
					return err
				}
				if err := walk(p, depth+1); err != nil {
					return err
				}
			}
		}
		mt, _, _ := e.Header.ContentType()
		b, err := io.ReadAll(e.Body)
		if err != nil {
			return fmt.Errorf("read %s part: %w", mt, err)
		}
		if mt == "message/rfc822" {
			inner, err := mimeLeaves(b, depth+1)
			out = append(out, inner...)
			return err
		}
		out = append(out, mt+": "+string(b))
		return nil
	}
	return out, walk(e, depth)
}
