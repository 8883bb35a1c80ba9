//! The pieces of a SentencePiece `tokenizer.model`: text, score and type of each.
//!
//! Hand-written: the file is a protobuf `ModelProto` and the pieces are its field 1; reading them
//! needs twenty lines, where a protobuf crate would need the schema compiled in a build script.

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text (`▁` for spaces).
    pub text: String,
    /// Its log-probability score.
    pub score: f32,
    /// sentencepiece's type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: i32,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("field runs past the end")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// The next field: (number, wire type, payload for length-delimited / fixed32, varint value).
    fn field(&mut self) -> Result<(u64, u64, &'a [u8], u64), String> {
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => Ok((num, wire, &[], self.varint()?)),
            1 => Ok((num, wire, self.bytes(8)?, 0)),
            2 => {
                let n = self.varint()? as usize;
                Ok((num, wire, self.bytes(n)?, 0))
            }
            5 => Ok((num, wire, self.bytes(4)?, 0)),
            _ => Err(format!("unsupported protobuf wire type {wire}")),
        }
    }
}

/// Every piece of the model in id order; an error says why the file is not a sentencepiece model.
pub fn pieces(model: &[u8]) -> Result<Vec<Piece>, String> {
    let mut r = Reader { buf: model, pos: 0 };
    let mut out = vec![];
    while r.pos < model.len() {
        let (num, wire, payload, _) = r.field()?;
        if num != 1 || wire != 2 {
            continue;
        }
        let mut p = Reader { buf: payload, pos: 0 };
        let mut piece = Piece { text: String::new(), score: 0.0, kind: 1 };
        while p.pos < payload.len() {
            match p.field()? {
                (1, 2, s, _) => piece.text = String::from_utf8(s.to_vec()).map_err(|_| "a piece is not UTF-8")?,
                (2, 5, s, _) => piece.score = f32::from_le_bytes(s.try_into().expect("4 bytes")),
                (3, 0, _, v) => piece.kind = v as i32,
                _ => {}
            }
        }
        out.push(piece);
    }
    if out.is_empty() {
        return Err("not a sentencepiece model (no pieces)".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_read_from_field_one() {
        // piece {piece: "<unk>", score: 0.0, type: UNKNOWN}, piece {piece: "a", score: -1.5}, trainer_spec {..}
        let mut m = vec![0x0a, 14, 0x0a, 5];
        m.extend(b"<unk>");
        m.extend([0x15, 0, 0, 0, 0, 0x18, 2]);
        m.extend([0x0a, 8, 0x0a, 1, b'a', 0x15]);
        m.extend((-1.5f32).to_le_bytes());
        m.extend([0x12, 2, 0x08, 1]);
        let p = pieces(&m).unwrap();
        assert_eq!(p[0], Piece { text: "<unk>".into(), score: 0.0, kind: 2 });
        assert_eq!(p[1], Piece { text: "a".into(), score: -1.5, kind: 1 });
        assert_eq!(pieces(&[0x0a, 50]).unwrap_err(), "field runs past the end");
    }
}
