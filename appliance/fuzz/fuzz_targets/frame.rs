//! The wire protocol's frame decoder, as a relay or target reads a peer's byte stream: in
//! arbitrary pieces, every frame decoded, the stored-record decoder too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size the stream arrives in.
    let Some((&split, stream)) = data.split_first() else { return };
    let piece = usize::from(split).max(1);
    let mut reader = wire::FrameReader::new();
    for chunk in stream.chunks(piece) {
        reader.feed(chunk);
        loop {
            match reader.peek() {
                Ok(Some((raw, used))) => {
                    let _ = raw.decode();
                    reader.consume(used);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = wire::decode_frame(stream);
    let _ = wire::decode_stored(stream);
    // Every body decoder without the CRC in the way (mutated frames rarely keep a valid CRC):
    // the next byte picks the frame type, the rest is its body.
    if let Some((&kind, body)) = stream.split_first() {
        if let Ok(frame_type) = wire::FrameType::from_u8(kind) {
            let _ = wire::RawFrame { frame_type, body }.decode();
        }
    }
});
