import redis


def test_redis_server_answers(redis_db: redis.Redis) -> None:
    assert redis_db.ping()


def test_kafka_broker_takes_a_record(kafka_bootstrap: str) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def roundtrip() -> bytes:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("stack.check", b"hello")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("stack.check", bootstrap_servers=kafka_bootstrap,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 10)
        finally:
            await consumer.stop()
        return record.value

    assert asyncio.run(roundtrip()) == b"hello"
